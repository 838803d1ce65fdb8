"""The expert atlas: every expert of every routing group, browsable and searchable offline.

`build` makes one pass over the text (build.py, on the active pairs only: pairs.py) and writes a
directory (store.py); `query` answers questions about it (experts, search, corpora, masking);
`server` serves those answers as JSON and a small web app (static/).
"""
