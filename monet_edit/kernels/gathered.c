/* Gathered grouped GEMMs of the routing-sparse expert layer, for CPUs (fp32).

   The torch path (routed.up / routed.down) copies each pair's hidden row before a small GEMM and
   scatters each output row after one; these kernels read and update the rows in place, so every
   byte of x and y moves once per pair instead of three times and no GEMM library packs an operand
   16 columns wide. Written with GCC/Clang vector extensions (a vector as wide as the widest
   registers -march=native enables, see LANES), no intrinsics.

   Both take the pairs grouped by sub-expert: pair p = start[e] .. start[e+1]-1 of sub-expert e has
   token tok[p]; within a sub-expert the tokens are distinct. The work is cut into disjoint shares
   (sub-experts bounds[s] .. bounds[s+1]-1 for `up`, output columns for `down`), each with its own
   buffers. Built with -fopenmp, one call runs its shares on the OpenMP threads of the process,
   which in a torch process are torch's own (the runtime is loaded once, by soname), so the kernels
   and torch's operators never compete for cores; built without, the caller runs one share per call
   from its own threads. */

#include <stdint.h>
#include <string.h>

/* One vector of the widest registers the target has: 16 floats (a zmm) on AVX-512, else 8 (a ymm
   on AVX, two xmm or NEON registers elsewhere). The tiles are sized to the register file: 32
   vector registers on AVX-512, 16 on AVX2 and most others. */
#if defined(__AVX512F__)
#define LANES 16
#define UPC 4 /* weight rows per up tile (4 pairs x UPC accumulators + UPC + 1 registers) */
#define DV 4  /* vectors per row of a down tile (4 pairs x DV accumulators + DV + 1) */
#else
#define LANES 8
#define UPC 2
#define DV 2
#endif
typedef float vec __attribute__((vector_size(LANES * 4)));
/* Keeps a loaded vector in a register: without it GCC folds the load into every FMA that uses it,
   one load per FMA instead of one per C FMAs, and the tile becomes load-bound. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX__)
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define IN_REGISTER(v) (void)0
#endif

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
static inline vec splat(float s) { return (vec){} + s; }
typedef float half __attribute__((vector_size(32)));
typedef float quarter __attribute__((vector_size(16)));
/* Horizontal sum as a tree (16 -> 8 -> 4 lanes, then 4 scalars): a few independent instructions
   instead of a chain of dependent scalar adds. */
static inline float sum(vec v) {
    half h;
#if LANES == 16
    half lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    h = lo + hi;
#else
    h = v;
#endif
    quarter a, b;
    memcpy(&a, &h, sizeof a);
    memcpy(&b, (const char *)&h + sizeof a, sizeof b);
    quarter q = a + b;
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* The up side: acc[p, c] += x[tok[p], k0:k1] . w[c, k0:k1] for a tile of R pairs and C columns,
   as LANES-wide partial sums (reduced once, at the end). The k range is cut into chunks of KC so a
   sub-expert's chunk of weight rows (width x KC floats) and the tile's chunks of x rows stay in L1
   while every pair of the sub-expert passes over them. */
#define KC 256
int64_t monet_up_chunk(void) { return KC; }
int64_t monet_lanes(void) { return LANES; }
#define UP_TILE(NAME, R, C)                                                                      \
    static inline void NAME(const float *const *xr, const float *wc, int64_t ld, int64_t kn,    \
                            float *acc, int64_t width) {                                        \
        vec a[R][C];                                                                             \
        for (int r = 0; r < R; r++)                                                              \
            for (int c = 0; c < C; c++) a[r][c] = load(acc + (r * width + c) * LANES);           \
        for (int64_t k = 0; k < kn; k += LANES) {                                                \
            vec wv[C];                                                                           \
            for (int c = 0; c < C; c++) { wv[c] = load(wc + c * ld + k); IN_REGISTER(wv[c]); }   \
            for (int r = 0; r < R; r++) {                                                        \
                vec xv = load(xr[r] + k);                                                        \
                for (int c = 0; c < C; c++) a[r][c] += xv * wv[c];                               \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int c = 0; c < C; c++) store(acc + (r * width + c) * LANES, a[r][c]);           \
    }
UP_TILE(up_tile_4_c, 4, UPC)
UP_TILE(up_tile_1_c, 1, UPC)
UP_TILE(up_tile_4_1, 4, 1)
UP_TILE(up_tile_1_1, 1, 1)

/* Tiles over one k chunk for the pairs p0..p1-1 of one sub-expert (acc: their partial sums). */
static void up_chunk(const float *x, int64_t d, const float *we, int64_t ld, int64_t width,
                     const int64_t *tok, int64_t p0, int64_t p1, int64_t kn, float *acc) {
    int64_t p = p0;
    for (; p + 4 <= p1; p += 4) {
        const float *xr[4] = {x + tok[p] * d, x + tok[p + 1] * d, x + tok[p + 2] * d, x + tok[p + 3] * d};
        for (int64_t q = p + 4; q < p + 8 && q < p1; q++)  /* the next tile's rows, from L3 */
            for (int64_t k = 0; k < kn; k += 16) __builtin_prefetch(x + tok[q] * d + k, 0, 3);
        float *ap = acc + (p - p0) * width * LANES;
        int64_t c = 0;
        for (; c + UPC <= width; c += UPC) up_tile_4_c(xr, we + c * ld, ld, kn, ap + c * LANES, width);
        for (; c < width; c++) up_tile_4_1(xr, we + c * ld, ld, kn, ap + c * LANES, width);
    }
    for (; p < p1; p++) {
        const float *xr[1] = {x + tok[p] * d};
        float *ap = acc + (p - p0) * width * LANES;
        int64_t c = 0;
        for (; c + UPC <= width; c += UPC) up_tile_1_c(xr, we + c * ld, ld, kn, ap + c * LANES, width);
        for (; c < width; c++) up_tile_1_1(xr, we + c * ld, ld, kn, ap + c * LANES, width);
    }
}

static inline float relu2(float v) { return v > 0.0f ? v * v : 0.0f; }

/* out[p, c] = relu(x[tok[p]] . w[e*width + c] + b[e*width + c])^2 for the pairs of sub-experts
   e0..e1-1; w: [E*width, d] (sub-expert e's rows e*width ..), out: [P, width]. `scratch` holds
   width LANES-wide sums per pair of the largest sub-expert. */
static void up_share(const float *x, int64_t d, int64_t ldx, const float *w, const float *b, int64_t width,
                     const int64_t *tok, const int64_t *start, int64_t e0, int64_t e1, float *out, float *scratch,
                     float *pack) {
    const int64_t dv = d - d % LANES; /* the part of d that whole vectors cover; the rest is a scalar tail */
    for (int64_t e = e0; e < e1; e++) {
        const float *we = w + e * width * d;
        int64_t p0 = start[e], p1 = start[e + 1];
        int64_t n = (p1 - p0) * width;
        memset(scratch, 0, (size_t)n * LANES * sizeof(float));
        for (int64_t k0 = 0; k0 < dv; k0 += KC) {
            int64_t kn = k0 + KC < dv ? KC : dv - k0;
            for (int64_t c = 0; c < width; c++) memcpy(pack + c * kn, we + c * d + k0, (size_t)kn * sizeof(float));
            /* the next chunk's weight rows (this sub-expert's or the next one's) come from memory:
               ask for them now so they arrive while this chunk computes */
            const float *next = k0 + KC < dv ? we + k0 + KC : we + width * d;
            if (e + 1 < e1 || k0 + KC < dv)
                for (int64_t c = 0; c < width; c++)
                    for (int64_t k = 0; k < KC; k += 16) __builtin_prefetch(next + c * d + k, 0, 2);
            up_chunk(x + k0, ldx, pack, kn, width, tok, p0, p1, kn, scratch);
        }
        for (int64_t p = p0; p < p1; p++) {
            const float *xp = x + tok[p] * ldx;
            for (int64_t c = 0; c < width; c++) {
                float s = sum(load(scratch + ((p - p0) * width + c) * LANES)) + b[e * width + c];
                for (int64_t k = dv; k < d; k++) s += xp[k] * we[c * d + k];
                out[p * width + c] = relu2(s);
            }
        }
    }
}

/* y[tok[p], j0:j1] += sum_t slots_t[p] @ w_t[e][:, j0:j1], for the `terms` (slots_t [P, width_t],
   w_t [E, width_t, dout] expert-major) of every pair p of every sub-expert; y is zeroed first in
   j0..j1. A bias is a term of width 1 (its per-pair weight as the slot, its rows as w).

   Per sub-expert and block of JB columns, the block's rows of every term are packed side by side
   (`pack`: sum_t width_t rows of JB floats): in place they lie dout floats apart, a stride that
   puts all of them and the pairs' y rows in the same few L1 sets, where they evict each other. */
#define JB 256
int64_t monet_down_block(void) { return JB; }
#define DOWN_TILE(NAME, R, NV)                                                                   \
    static inline void NAME(float *const *yr, int64_t p, int64_t j, int terms,                  \
                            const float *const *slots, const int64_t *widths, const float *pk) { \
        vec acc[R][NV];                                                                          \
        for (int r = 0; r < R; r++)                                                              \
            for (int v = 0; v < NV; v++) acc[r][v] = load(yr[r] + j + v * LANES);                \
        const float *row = pk + j;                                                               \
        for (int t = 0; t < terms; t++) {                                                        \
            const int64_t width = widths[t];                                                     \
            const float *st = slots[t] + p * width;                                              \
            for (int64_t c = 0; c < width; c++, row += JB) {                                     \
                vec wv[NV];                                                                      \
                for (int v = 0; v < NV; v++) { wv[v] = load(row + v * LANES); IN_REGISTER(wv[v]); } \
                for (int r = 0; r < R; r++) {                                                    \
                    vec s = splat(st[r * width + c]);                                            \
                    for (int v = 0; v < NV; v++) acc[r][v] += s * wv[v];                         \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int v = 0; v < NV; v++) store(yr[r] + j + v * LANES, acc[r][v]);                \
    }
DOWN_TILE(down_tile_4_v, 4, DV)
DOWN_TILE(down_tile_4_1, 4, 1)
DOWN_TILE(down_tile_1_v, 1, DV)
DOWN_TILE(down_tile_1_1, 1, 1)

/* Columns j .. jn-1 of the block (fewer than LANES), one pair. */
static void down_tail(float *yr, int64_t p, int64_t j, int64_t jn, int terms, const float *const *slots,
                      const int64_t *widths, const float *pk) {
    const float *row = pk;
    for (int t = 0; t < terms; t++) {
        const int64_t width = widths[t];
        const float *st = slots[t] + p * width;
        for (int64_t c = 0; c < width; c++, row += JB)
            for (int64_t q = j; q < jn; q++) yr[q] += st[c] * row[q];
    }
}

static void down_share(int terms, const float *const *slots, const int64_t *widths, const float *const *w,
                       int64_t dout, const int64_t *tok, const int64_t *start, int64_t experts, int64_t tokens,
                       int64_t j0, int64_t j1, float *y, float *pack) {
    for (int64_t n = 0; n < tokens; n++) memset(y + n * dout + j0, 0, (size_t)(j1 - j0) * sizeof(float));
    const int64_t tile = DV * LANES;
    for (int64_t e = 0; e < experts; e++) {
        const int64_t p0 = start[e], p1 = start[e + 1];
        if (p0 == p1) continue;
        for (int64_t jb = j0; jb < j1; jb += JB) {
            const int64_t jn = jb + JB < j1 ? JB : j1 - jb;
            float *row = pack;
            for (int t = 0; t < terms; t++)
                for (int64_t c = 0; c < widths[t]; c++, row += JB)
                    memcpy(row, w[t] + (e * widths[t] + c) * dout + jb, (size_t)jn * sizeof(float));
            int64_t p = p0;
            for (; p + 4 <= p1; p += 4) {
                float *yr[4] = {y + tok[p] * dout + jb, y + tok[p + 1] * dout + jb,
                                y + tok[p + 2] * dout + jb, y + tok[p + 3] * dout + jb};
                int64_t j = 0;
                for (; j + tile <= jn; j += tile) down_tile_4_v(yr, p, j, terms, slots, widths, pack);
                for (; j + LANES <= jn; j += LANES) down_tile_4_1(yr, p, j, terms, slots, widths, pack);
                for (int r = 0; r < 4; r++) down_tail(yr[r], p + r, j, jn, terms, slots, widths, pack);
            }
            for (; p < p1; p++) {
                float *yr[1] = {y + tok[p] * dout + jb};
                int64_t j = 0;
                for (; j + tile <= jn; j += tile) down_tile_1_v(yr, p, j, terms, slots, widths, pack);
                for (; j + LANES <= jn; j += LANES) down_tile_1_1(yr, p, j, terms, slots, widths, pack);
                down_tail(yr[0], p, j, jn, terms, slots, widths, pack);
            }
        }
    }
}

int64_t monet_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void monet_up(const float *x, int64_t d, int64_t ldx, const float *w, const float *b, int64_t width,
              const int64_t *tok, const int64_t *start, float *out, const int64_t *bounds, int64_t shares,
              float *const *scratch, float *const *pack) {
#pragma omp parallel for schedule(static, 1) num_threads(shares)
    for (int64_t s = 0; s < shares; s++)
        up_share(x, d, ldx, w, b, width, tok, start, bounds[s], bounds[s + 1], out, scratch[s], pack[s]);
}

void monet_down(int terms, const float *const *slots, const int64_t *widths, const float *const *w,
                int64_t dout, const int64_t *tok, const int64_t *start, int64_t experts, int64_t tokens,
                float *y, const int64_t *bounds, int64_t shares, float *const *pack) {
#pragma omp parallel for schedule(static, 1) num_threads(shares)
    for (int64_t s = 0; s < shares; s++)
        down_share(terms, slots, widths, w, dout, tok, start, experts, tokens, bounds[s], bounds[s + 1], y, pack[s]);
}
