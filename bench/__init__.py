"""`make bench`: monet-edit's speed, memory and precision figures (`python -m bench`), one module
per figure; common.py holds the shared shapes, settled random models and interleaved timing, and
baseline.py / upstream.py the faithful baseline and the published file it is checked against."""
