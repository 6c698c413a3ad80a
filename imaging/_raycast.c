/*
 * The DRR ray caster (imaging/drr.py `_cast_rows`), compiled ahead of time.
 *
 * Why C and not a JIT: igrtd runs under systemd's MemoryDenyWriteExecute=yes
 * (systemd/igrtd.service), which forbids the writable-then-executable memory a
 * JIT such as numba needs; an extension module built by `pip install` is mapped
 * like any shared library (built by setup.py). The arithmetic is the Python
 * reference's (tests/imaging2d4d/raycast_reference.py), step for step: float32
 * positions and weights, two float32 running sums. setup.py forbids fused
 * multiply-adds (-ffp-contract=off), so the image is bit for bit the reference's,
 * on every CPU and whichever path below casts a ray (the tests hold them equal).
 *
 * Joseph's method: a ray is stepped one voxel plane at a time along its dominant
 * index axis k, sampled bilinearly in the other two (a, b); the sum times the ray
 * length per plane is its line integral. Planes outside the tissue of the
 * columns the ray passes are skipped (skip tables, SKIP_BLOCK columns a cell).
 *
 * Two paths: rays one at a time (any CPU, any memory order: `cast_one`), and, on
 * x86-64 CPUs with AVX2 (checked at import; the module itself is built for any
 * x86-64), LANES neighbouring rays of a row stepped together when the volume is
 * stored with the row's axis contiguous and the rays are dense (`cast_tile`).
 *
 * cast_rows(voxels, strides_xyz, shape_xyz, room_to_index, source, pixel0,
 *           step_u, step_v, box_lo, box_hi, skip_first, skip_last,
 *           row_first, row_step, out) -> None
 * releases the GIL while it casts, so threads can share the rows of one image.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SKIP_BLOCK 8
#define NO_TISSUE INT32_MAX
#define EDGE 1e-3
#define PLANE_EPS 1e-9

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_TILES 1
/* a function built for AVX2 and for any x86-64, the loader picking one (ifunc) */
#define AVX2_OR_BASELINE __attribute__((target_clones("avx2", "default")))
#else
#define AVX2_OR_BASELINE
#endif

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static void release(Buf *b, int n) {
    for (int i = 0; i < n; i++)
        if (b[i].held) PyBuffer_Release(&b[i].view);
}

/* A C-contiguous buffer of `kind` ('f' float32, 'd' float64, 'q' int64, 'i' int32)
 * with `ndim` dimensions (0: any) and at least `min_len` items. */
static int get(PyObject *obj, Buf *b, char kind, int ndim, Py_ssize_t min_len, int writable,
               const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    char got = *f;
    if (got == 'l' && b->view.itemsize == 8) got = 'q';
    Py_ssize_t want = kind == 'f' ? 4 : kind == 'd' ? 8 : kind == 'q' ? 8 : 4;
    if (got != kind || f[1] != '\0' || b->view.itemsize != want) {
        PyErr_Format(PyExc_TypeError, "%s: expected item type '%c', got '%s'", name, kind,
                     b->view.format ? b->view.format : "B");
        return -1;
    }
    if (ndim && b->view.ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", name, ndim,
                     b->view.ndim);
        return -1;
    }
    if (b->view.len / b->view.itemsize < min_len) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items", name, min_len);
        return -1;
    }
    return 0;
}

static inline double dmin(double a, double b) { return a < b ? a : b; }
static inline double dmax(double a, double b) { return a > b ? a : b; }
/* the same as the vector path's max(lo, x) then min(hi, x) */
static inline float fclamp(float x, float lo, float hi) { x = x < lo ? lo : x; return x > hi ? hi : x; }

static inline float bilinear(const float *restrict v, uint64_t q, float fa, float fb,
                             uint64_t ua, uint64_t ub, uint64_t uab) {
    float v00 = v[q];
    float v0 = v00 + fa * (v[q + ua] - v00);
    float v01 = v[q + ub];
    float v1 = v01 + fa * (v[q + uab] - v01);
    return v0 + fb * (v1 - v0);
}

typedef struct {
    const float *vox;
    int64_t stride[3];
    int64_t n[3];
    double m[3][4];
    double src[3]; /* the source in room coordinates */
    double s[3];   /* ... and in continuous index */
    const double *pixel0, *step_u, *step_v;
    double lo[3], hi[3];
    const int32_t *skip_first, *skip_last;
    Py_ssize_t nb_a, nb_b; /* skip tables: [3][nb_a][nb_b] */
    float *out;
    Py_ssize_t nv, nu;
} Job;

/* Per-sample scratch of the scalar path (one volume axis long), per thread. */
typedef struct {
    uint32_t *base;
    float *wa, *wb;
} Scratch;

/* One ray, set up: sample j (0 <= j < cnt) lies on plane i0 + j of index axis k, at
 * in-plane position (pa0 + j fra, pb0 + j frb) along (a, b) = (k + 1, k + 2) mod 3. */
typedef struct {
    int k;
    int32_t i0, cnt; /* cnt <= 0: the ray reads nothing */
    float pa0, pb0, fra, frb;
    double dk, length; /* line integral = sum / dk * length */
} Ray;

/* The tissue planes of the skip-table blocks the last ray passed (k = -1: none yet). */
typedef struct {
    int k;
    int64_t a_lo, a_hi, b_lo, b_hi;
    int32_t first, last;
} BlockCache;

static void setup_ray(const Job *J, Py_ssize_t r, Py_ssize_t c, BlockCache *C, Ray *R) {
    const double (*m)[4] = J->m;
    const double *s = J->s;
    R->cnt = 0;
    /* ray = source + t w, t in [0, 1] from the source to the detector pixel */
    double wx = J->pixel0[0] + c * J->step_u[0] + r * J->step_v[0] - J->src[0];
    double wy = J->pixel0[1] + c * J->step_u[1] + r * J->step_v[1] - J->src[1];
    double wz = J->pixel0[2] + c * J->step_u[2] + r * J->step_v[2] - J->src[2];
    double d[3] = {m[0][0] * wx + m[0][1] * wy + m[0][2] * wz,
                   m[1][0] * wx + m[1][1] * wy + m[1][2] * wz,
                   m[2][0] * wx + m[2][1] * wy + m[2][2] * wz};
    int k = 0;
    for (int ax = 0; ax < 3; ax++)
        if (fabs(d[ax]) > fabs(d[k])) k = ax;
    R->k = k;
    if (fabs(d[k]) < 1e-12) return;
    double t0 = 0.0, t1 = 1.0;
    for (int ax = 0; ax < 3; ax++) {
        if (fabs(d[ax]) < 1e-12) {
            if (s[ax] < J->lo[ax] || s[ax] > J->hi[ax]) t1 = -1.0;
        } else {
            double inv = 1.0 / d[ax];
            double ta = (J->lo[ax] - s[ax]) * inv, tb = (J->hi[ax] - s[ax]) * inv;
            t0 = dmax(t0, dmin(ta, tb));
            t1 = dmin(t1, dmax(ta, tb));
        }
    }
    if (t1 <= t0) return;
    int a = (k + 1) % 3, b = (k + 2) % 3;
    double inv_k = 1.0 / d[k];
    double ra = d[a] * inv_k, rb = d[b] * inv_k; /* in-plane position at plane i: c + i r */
    double ca = s[a] - s[k] * ra, cb = s[b] - s[k] * rb;
    double xk0 = s[k] + t0 * d[k], xk1 = s[k] + t1 * d[k];
    /* planes on the box's faces are inside it: xk is one rounding away from
     * the face's integer index, so allow PLANE_EPS either way */
    int64_t i0 = (int64_t)ceil(dmin(xk0, xk1) - PLANE_EPS);
    if (i0 < 0) i0 = 0;
    int64_t i1 = (int64_t)floor(dmax(xk0, xk1) + PLANE_EPS);
    if (i1 > J->n[k] - 1) i1 = J->n[k] - 1;
    double top_a = (double)J->n[a] - 1.0 - EDGE, top_b = (double)J->n[b] - 1.0 - EDGE;
    /* trim air: planes outside the tissue of the columns this ray passes */
    double pa_i0 = ca + i0 * ra, pa_i1 = ca + i1 * ra;
    double pb_i0 = cb + i0 * rb, pb_i1 = cb + i1 * rb;
    int64_t a_lo = (int64_t)dmin(dmax(dmin(pa_i0, pa_i1) - 0.01, 0.0), top_a) / SKIP_BLOCK;
    int64_t a_hi = (int64_t)dmin(dmax(dmax(pa_i0, pa_i1) + 0.01, 0.0), top_a) / SKIP_BLOCK;
    int64_t b_lo = (int64_t)dmin(dmax(dmin(pb_i0, pb_i1) - 0.01, 0.0), top_b) / SKIP_BLOCK;
    int64_t b_hi = (int64_t)dmin(dmax(dmax(pb_i0, pb_i1) + 0.01, 0.0), top_b) / SKIP_BLOCK;
    /* neighbouring rays mostly pass the same blocks: look them up once */
    if (k != C->k || a_lo != C->a_lo || a_hi != C->a_hi || b_lo != C->b_lo || b_hi != C->b_hi) {
        int32_t first = NO_TISSUE, last = -1;
        for (int64_t ba = a_lo; ba <= a_hi; ba++)
            for (int64_t bb = b_lo; bb <= b_hi; bb++) {
                Py_ssize_t q = ((Py_ssize_t)k * J->nb_a + ba) * J->nb_b + bb;
                if (J->skip_first[q] < first) first = J->skip_first[q];
                if (J->skip_last[q] > last) last = J->skip_last[q];
            }
        C->k = k, C->a_lo = a_lo, C->a_hi = a_hi, C->b_lo = b_lo, C->b_hi = b_hi;
        C->first = first, C->last = last;
    }
    int64_t first = C->first, last = C->last;
    if (first > i0) i0 = first;
    if (last < i1) i1 = last;
    if (i1 < i0) return;
    R->i0 = (int32_t)i0;
    R->cnt = (int32_t)(i1 - i0 + 1);
    R->pa0 = (float)(ca + i0 * ra);
    R->pb0 = (float)(cb + i0 * rb);
    R->fra = (float)ra;
    R->frb = (float)rb;
    R->dk = fabs(d[k]);
    R->length = sqrt(wx * wx + wy * wy + wz * wz);
}

/* Pass 2 of the scalar path: gather and interpolate, kept scalar (gcc's vector
 * version, lanes filled one load at a time, measured 13 % slower with AVX2). */
__attribute__((noinline, optimize("no-tree-vectorize")))
static void gather_sum(const float *restrict v, const uint32_t *restrict base,
                       const float *restrict wa, const float *restrict wb, int32_t n, int odd_first,
                       uint64_t ua, uint64_t ub, float *even, float *odd) {
    const uint64_t uab = ua + ub;
    float e = *even, o = *odd;
    int32_t h = 0;
    if (odd_first && n > 0) {
        o += bilinear(v, base[0], wa[0], wb[0], ua, ub, uab);
        h = 1;
    }
    for (; h + 1 < n; h += 2) {
        e += bilinear(v, base[h], wa[h], wb[h], ua, ub, uab);
        o += bilinear(v, base[h + 1], wa[h + 1], wb[h + 1], ua, ub, uab);
    }
    if (h < n) e += bilinear(v, base[h], wa[h], wb[h], ua, ub, uab);
    *even = e, *odd = o;
}

/* Pass 1 of the scalar path (vectorises: locals, restrict, 32-bit indices as the
 * volume has < 2^31 voxels): flat index and weights of samples j_first <= j <
 * j_first + n, float32 positions, clamped so that every read (and its +1
 * neighbours) stays inside. Built for AVX2 and for any x86-64, the loader picking
 * one (ifunc; no code is made at run time): baseline x86-64 has no vector 32-bit
 * multiply, and the scalar path took 14 % longer. Same floats either way. */
AVX2_OR_BASELINE
static void plan_samples(const Job *J, const Ray *R, int32_t j_first, int32_t n,
                         uint32_t *restrict base, float *restrict wa, float *restrict wb) {
    const int k = R->k, a = (k + 1) % 3, b = (k + 2) % 3;
    const float pa0 = R->pa0, pb0 = R->pb0, fra = R->fra, frb = R->frb;
    const float fta = (float)((double)J->n[a] - 1.0 - EDGE);
    const float ftb = (float)((double)J->n[b] - 1.0 - EDGE);
    const int32_t b0 = (int32_t)(R->i0 * J->stride[k]), isk = (int32_t)J->stride[k];
    const int32_t isa = (int32_t)J->stride[a], isb = (int32_t)J->stride[b];
    for (int32_t h = 0; h < n; h++) {
        int32_t j = j_first + h;
        float pa = fclamp(pa0 + (float)j * fra, 0.0f, fta);
        float pb = fclamp(pb0 + (float)j * frb, 0.0f, ftb);
        int32_t ia = (int32_t)pa, ib = (int32_t)pb;
        wa[h] = pa - (float)ia;
        wb[h] = pb - (float)ib;
        base[h] = (uint32_t)(b0 + j * isk + ia * isa + ib * isb);
    }
}

/* Samples j_first <= j < j_end of ray R added to its two running sums (even and odd j). */
static void add_samples(const Job *J, const Ray *R, int32_t j_first, int32_t j_end,
                        const Scratch *S, float *even, float *odd) {
    if (j_end <= j_first) return;
    const int k = R->k, a = (k + 1) % 3, b = (k + 2) % 3;
    plan_samples(J, R, j_first, j_end - j_first, S->base, S->wa, S->wb);
    gather_sum(J->vox, S->base, S->wa, S->wb, j_end - j_first, j_first & 1,
               (uint64_t)J->stride[a], (uint64_t)J->stride[b], even, odd);
}

/* Sample j of ray R alone: the scalar path's arithmetic, operation for operation. */
static inline float one_sample(const Job *J, const Ray *R, int32_t j) {
    const int k = R->k, a = (k + 1) % 3, b = (k + 2) % 3;
    const float fta = (float)((double)J->n[a] - 1.0 - EDGE);
    const float ftb = (float)((double)J->n[b] - 1.0 - EDGE);
    float pa = fclamp(R->pa0 + (float)j * R->fra, 0.0f, fta);
    float pb = fclamp(R->pb0 + (float)j * R->frb, 0.0f, ftb);
    int32_t ia = (int32_t)pa, ib = (int32_t)pb;
    const int32_t isk = (int32_t)J->stride[k], isa = (int32_t)J->stride[a], isb = (int32_t)J->stride[b];
    uint32_t q = (uint32_t)((int32_t)(R->i0 * J->stride[k]) + j * isk + ia * isa + ib * isb);
    return bilinear(J->vox, q, pa - (float)ia, pb - (float)ib, (uint64_t)isa, (uint64_t)isb,
                    (uint64_t)isa + (uint64_t)isb);
}

static float integral(const Ray *R, float even, float odd) {
    return (float)((double)(even + odd) / R->dk * R->length);
}

static float cast_one(const Job *J, const Ray *R, const Scratch *S) {
    if (R->cnt <= 0) return 0.0f;
    float even = 0.0f, odd = 0.0f;
    add_samples(J, R, 0, R->cnt, S, &even, &odd);
    return integral(R, even, odd);
}

#ifdef HAVE_TILES
#define LANES 8
/* a tile needs this many planes that all its rays sample, or it is not worth it */
#define MIN_COMMON 16
#ifndef CHUNK
#define CHUNK 32 /* planes per pass; even (the sums alternate), measured 16-64 alike */
#endif

/* R's position along axis a (or b) at plane i, as the scalar path computes it before
 * clamping */
static inline float lane_pos(const Ray *R, int axis_is_a, int32_t i) {
    return axis_is_a ? R->pa0 + (float)(i - R->i0) * R->fra : R->pb0 + (float)(i - R->i0) * R->frb;
}

/* Pass 1 of a tile, for planes c0 .. c0 + n - 1: weights, window offsets and the line to
 * read of every plane. `clamp` 0 when no position can leave the volume (the clamp would
 * change nothing): the compiler makes one loop of each. */
__attribute__((target("avx2"), always_inline))
static inline void plan_planes(int32_t c0, int32_t n, __m256 jf, const __m256 pw0, const __m256 fw,
                               const __m256 ph0, const __m256 fh, const __m256 wtop,
                               const __m256 htop, const int clamp, const int w_is_a,
                               const float *v, int64_t sk, int64_t sh, int32_t last_first,
                               float (*fa)[LANES], float (*fb)[LANES], int32_t (*off)[LANES],
                               const float **line, int *fits) {
    const __m256 zero = _mm256_setzero_ps(), onef = _mm256_set1_ps(1.0f);
    const __m256i most = _mm256_set1_epi32(LANES - 2);
    for (int32_t t = 0; t < n; t++) {
        __m256 pw = _mm256_add_ps(pw0, _mm256_mul_ps(jf, fw));
        __m256 ph = _mm256_add_ps(ph0, _mm256_mul_ps(jf, fh));
        if (clamp) {
            pw = _mm256_min_ps(wtop, _mm256_max_ps(zero, pw));
            ph = _mm256_min_ps(htop, _mm256_max_ps(zero, ph));
        }
        __m256i iw = _mm256_cvttps_epi32(pw), ih = _mm256_cvttps_epi32(ph);
        __m256 ww = _mm256_sub_ps(pw, _mm256_cvtepi32_ps(iw));
        __m256 wh = _mm256_sub_ps(ph, _mm256_cvtepi32_ps(ih));
        _mm256_store_ps(fa[t], w_is_a ? ww : wh);
        _mm256_store_ps(fb[t], w_is_a ? wh : ww);
        /* lanes are ordered by w (cast_tile), so lane 0 has the smallest */
        int32_t h0 = _mm256_cvtsi256_si32(ih), first = _mm256_cvtsi256_si32(iw);
        if (first > last_first) first = last_first;
        __m256i o = _mm256_sub_epi32(iw, _mm256_set1_epi32(first));
        _mm256_store_si256((__m256i *)off[t], o);
        /* every lane on line h0, and its w and w + 1 among the LANES voxels read */
        __m256i ok = _mm256_and_si256(_mm256_cmpeq_epi32(ih, _mm256_set1_epi32(h0)),
                                      _mm256_cmpeq_epi32(_mm256_max_epu32(o, most), most));
        fits[t] = _mm256_movemask_ps(_mm256_castsi256_ps(ok)) == (1 << LANES) - 1;
        line[t] = v + (c0 + t) * sk + h0 * sh + first;
        jf = _mm256_add_ps(jf, onef); /* exact: j < 2^24 */
    }
}

/* LANES neighbouring rays of a detector row, one per vector lane, stepped plane by
 * plane together. When the volume is stored with an in-plane axis w contiguous (the
 * axis along the detector row: drr.py picks that layout for dense rays), the lanes'
 * samples on one plane lie within a few voxels along w on one line of the other
 * in-plane axis h: two vector loads (lines h and h + 1) and four in-register
 * permutes give the four corners of all lanes, where the scalar path loads
 * 4 x LANES voxels one at a time. The arithmetic is the scalar path's, operation
 * for operation (float32, no fused multiply-add), so the image is bit for bit the
 * same; a plane whose samples do not fit that pattern is done lane by lane.
 * Returns 0, having written nothing, for rays that do not make such a tile. */
__attribute__((target("avx2")))
static int cast_tile(const Job *J, const Ray *rays, const Scratch *S, float *out) {
    const int k = rays[0].k, a = (k + 1) % 3, b = (k + 2) % 3;
    int w, h;
    if (J->stride[b] == 1) w = b, h = a;
    else if (J->stride[a] == 1) w = a, h = b;
    else return 0;
    const int w_is_a = w == a;
    const int64_t nw = J->n[w];
    if (nw < LANES) return 0;
    /* planes I0..I1 are sampled by every ray */
    int32_t I0 = 0, I1 = INT32_MAX;
    for (int l = 0; l < LANES; l++) {
        if (rays[l].k != k || rays[l].cnt <= 0) return 0;
        if (rays[l].i0 > I0) I0 = rays[l].i0;
        if (rays[l].i0 + rays[l].cnt - 1 < I1) I1 = rays[l].i0 + rays[l].cnt - 1;
    }
    if (I1 - I0 + 1 < MIN_COMMON) return 0;
    /* lanes in increasing w (rays in reverse when w decreases along the row), the
     * first and last within LANES - 2 voxels at both ends, so on every plane between
     * (each position is linear in the plane): then every lane's w and w + 1 are among
     * the LANES voxels read from the first lane's w, unless positions round or clamp
     * unluckily (plan_planes checks) */
    float w_first0 = lane_pos(&rays[0], w_is_a, I0), w_last0 = lane_pos(&rays[LANES - 1], w_is_a, I0);
    float w_first1 = lane_pos(&rays[0], w_is_a, I1), w_last1 = lane_pos(&rays[LANES - 1], w_is_a, I1);
    if (fabsf(w_last0 - w_first0) > LANES - 2 || fabsf(w_last1 - w_first1) > LANES - 2) return 0;
    const int reverse = w_last0 < w_first0;
    const Ray *R[LANES];
    for (int l = 0; l < LANES; l++) R[l] = &rays[reverse ? LANES - 1 - l : l];
    const float wtop = (float)((double)nw - 1.0 - EDGE), htop = (float)((double)J->n[h] - 1.0 - EDGE);
    /* the positions are monotonic in the plane (float rounding is), so when both ends
     * are inside the volume, every plane is and the clamp can go */
    int clamp = 0;
    /* head: each lane's samples before I0, into its two running sums as usual */
    float even[LANES], odd[LANES], x0[LANES], y0[LANES];
    float pw0[LANES], fw[LANES], ph0[LANES], fh[LANES], j0[LANES];
    for (int l = 0; l < LANES; l++) {
        even[l] = odd[l] = 0.0f;
        add_samples(J, R[l], 0, I0 - R[l]->i0, S, &even[l], &odd[l]);
        for (int end = 0; end < 2; end++) {
            float pw = lane_pos(R[l], w_is_a, end ? I1 : I0), ph = lane_pos(R[l], !w_is_a, end ? I1 : I0);
            if (!(pw >= 0.0f && pw <= wtop && ph >= 0.0f && ph <= htop)) clamp = 1;
        }
        pw0[l] = w_is_a ? R[l]->pa0 : R[l]->pb0;
        fw[l] = w_is_a ? R[l]->fra : R[l]->frb;
        ph0[l] = w_is_a ? R[l]->pb0 : R[l]->pa0;
        fh[l] = w_is_a ? R[l]->frb : R[l]->fra;
        j0[l] = (float)(I0 - R[l]->i0);
        /* x takes the samples of even steps from I0, y of odd ones: a lane's even and
         * odd sums, or the other way round when its sample at I0 has an odd j */
        int flip = (I0 - R[l]->i0) & 1;
        x0[l] = flip ? odd[l] : even[l];
        y0[l] = flip ? even[l] : odd[l];
    }
    const float *restrict v = J->vox;
    const int64_t sk = J->stride[k], sh = J->stride[h];
    const __m256 vpw0 = _mm256_loadu_ps(pw0), vfw = _mm256_loadu_ps(fw);
    const __m256 vph0 = _mm256_loadu_ps(ph0), vfh = _mm256_loadu_ps(fh);
    const __m256 vwtop = _mm256_set1_ps(wtop), vhtop = _mm256_set1_ps(htop);
    const __m256i one = _mm256_set1_epi32(1);
    const int32_t last_first = (int32_t)(nw - LANES);
    __m256 x = _mm256_loadu_ps(x0), y = _mm256_loadu_ps(y0);
    __m256 jf = _mm256_loadu_ps(j0);
    /* two passes per CHUNK planes, as in the scalar path: where to read and the
     * weights, then the reads. In one pass the loop was latency-bound: a plane's
     * reads wait for its positions, and its ~100 micro-operations left no room in
     * the CPU's reorder window for the next plane's (measured 15-20 % slower). */
    __attribute__((aligned(32))) float fa[CHUNK][LANES], fb[CHUNK][LANES];
    __attribute__((aligned(32))) int32_t off[CHUNK][LANES];
    const float *line[CHUNK];
    int fits[CHUNK];
    for (int32_t c0 = I0; c0 <= I1; c0 += CHUNK) {
        const int32_t n = I1 - c0 + 1 < CHUNK ? I1 - c0 + 1 : CHUNK;
        if (clamp)
            plan_planes(c0, n, jf, vpw0, vfw, vph0, vfh, vwtop, vhtop, 1, w_is_a, v, sk, sh,
                        last_first, fa, fb, off, line, fits);
        else
            plan_planes(c0, n, jf, vpw0, vfw, vph0, vfh, vwtop, vhtop, 0, w_is_a, v, sk, sh,
                        last_first, fa, fb, off, line, fits);
        jf = _mm256_add_ps(jf, _mm256_set1_ps((float)n));
        for (int32_t t = 0; t < n; t++) {
            __m256 val;
            if (fits[t]) {
                __m256 l0 = _mm256_loadu_ps(line[t]), l1 = _mm256_loadu_ps(line[t] + sh);
                __m256i o = _mm256_load_si256((const __m256i *)off[t]);
                __m256i o1 = _mm256_add_epi32(o, one);
                /* c<w><h>: the corner at +w, +h; the scalar path's v<a><b> */
                __m256 c00 = _mm256_permutevar8x32_ps(l0, o), c10 = _mm256_permutevar8x32_ps(l0, o1);
                __m256 c01 = _mm256_permutevar8x32_ps(l1, o), c11 = _mm256_permutevar8x32_ps(l1, o1);
                __m256 v00 = c00, v11 = c11;
                __m256 v10 = w_is_a ? c10 : c01, v01 = w_is_a ? c01 : c10;
                __m256 wa = _mm256_load_ps(fa[t]), wb = _mm256_load_ps(fb[t]);
                __m256 v0 = _mm256_add_ps(v00, _mm256_mul_ps(wa, _mm256_sub_ps(v10, v00)));
                __m256 v1 = _mm256_add_ps(v01, _mm256_mul_ps(wa, _mm256_sub_ps(v11, v01)));
                val = _mm256_add_ps(v0, _mm256_mul_ps(wb, _mm256_sub_ps(v1, v0)));
            } else {
                float vals[LANES];
                for (int l = 0; l < LANES; l++) vals[l] = one_sample(J, R[l], c0 + t - R[l]->i0);
                val = _mm256_loadu_ps(vals);
            }
            /* CHUNK is even: step t of a chunk has the parity of step c0 + t - I0 */
            if (t & 1) y = _mm256_add_ps(y, val);
            else x = _mm256_add_ps(x, val);
        }
    }
    _mm256_storeu_ps(x0, x);
    _mm256_storeu_ps(y0, y);
    /* tail: each lane's samples after I1 */
    for (int l = 0; l < LANES; l++) {
        int flip = (I0 - R[l]->i0) & 1;
        even[l] = flip ? y0[l] : x0[l];
        odd[l] = flip ? x0[l] : y0[l];
        add_samples(J, R[l], I1 + 1 - R[l]->i0, R[l]->cnt, S, &even[l], &odd[l]);
        out[reverse ? LANES - 1 - l : l] = integral(R[l], even[l], odd[l]);
    }
    return 1;
}
#endif

static void cast(const Job *J, Py_ssize_t row_first, Py_ssize_t row_step, const Scratch *S,
                 int tiles) {
    BlockCache C = {.k = -1};
    for (Py_ssize_t r = row_first; r < J->nv; r += row_step) {
        float *o = &J->out[r * J->nu];
        Py_ssize_t c = 0;
#ifdef HAVE_TILES
        if (tiles) {
            Ray R[LANES];
            for (; c + LANES <= J->nu; c += LANES) {
                for (int l = 0; l < LANES; l++) setup_ray(J, r, c + l, &C, &R[l]);
                if (!cast_tile(J, R, S, o + c))
                    for (int l = 0; l < LANES; l++) o[c + l] = cast_one(J, &R[l], S);
            }
        }
#else
        (void)tiles;
#endif
        for (; c < J->nu; c++) {
            Ray R;
            setup_ray(J, r, c, &C, &R);
            o[c] = cast_one(J, &R, S);
        }
    }
}

static int have_avx2; /* set at import: cast_tile may run */

static PyObject *cast_rows(PyObject *self, PyObject *args) {
    PyObject *o[13];
    Py_ssize_t row_first, row_step;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOnnO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &row_first, &row_step,
                          &o[12]))
        return NULL;
    if (row_first < 0 || row_step < 1) {
        PyErr_SetString(PyExc_ValueError, "row_first must be >= 0 and row_step >= 1");
        return NULL;
    }
    Buf b[13];
    memset(b, 0, sizeof b);
    static const char *names[13] = {"voxels", "strides_xyz", "shape_xyz", "room_to_index",
                                    "source", "pixel0", "step_u", "step_v", "box_lo", "box_hi",
                                    "skip_first", "skip_last", "out"};
    static const char kinds[13] = {'f', 'q', 'q', 'd', 'd', 'd', 'd', 'd', 'd', 'd', 'i', 'i', 'f'};
    static const int ndims[13] = {1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 3, 3, 2};
    static const Py_ssize_t lens[13] = {1, 3, 3, 12, 3, 3, 3, 3, 3, 3, 3, 3, 0};
    for (int i = 0; i < 13; i++) {
        if (get(o[i], &b[i], kinds[i], ndims[i], lens[i], i == 12, names[i]) < 0) {
            release(b, 13);
            return NULL;
        }
    }
    Job J;
    const int64_t *strides = b[1].view.buf, *shape = b[2].view.buf;
    const double *m = b[3].view.buf;
    int64_t total = 1, longest = 0;
    for (int i = 0; i < 3; i++) {
        J.stride[i] = strides[i];
        J.n[i] = shape[i];
        if (shape[i] < 2 || strides[i] < 1) {
            PyErr_SetString(PyExc_ValueError, "shape_xyz must be >= 2 and strides_xyz >= 1");
            release(b, 13);
            return NULL;
        }
        total *= shape[i];
        if (shape[i] > longest) longest = shape[i];
        for (int j = 0; j < 4; j++) J.m[i][j] = m[i * 4 + j];
    }
    if (b[3].view.shape[0] != 3 || b[3].view.shape[1] != 4 || total >= ((int64_t)1 << 31) ||
        b[0].view.len / 4 < total || b[10].view.shape[0] != 3 || b[11].view.shape[0] != 3 ||
        b[10].view.shape[1] != b[11].view.shape[1] || b[10].view.shape[2] != b[11].view.shape[2] ||
        b[10].view.shape[1] * SKIP_BLOCK < longest || b[10].view.shape[2] * SKIP_BLOCK < longest) {
        PyErr_SetString(PyExc_ValueError, "ray caster: inconsistent volume, matrix or skip tables");
        release(b, 13);
        return NULL;
    }
    J.vox = b[0].view.buf;
    const double *src = b[4].view.buf;
    for (int i = 0; i < 3; i++) {
        J.src[i] = src[i];
        J.s[i] = m[i * 4] * src[0] + m[i * 4 + 1] * src[1] + m[i * 4 + 2] * src[2] + m[i * 4 + 3];
        J.lo[i] = ((const double *)b[8].view.buf)[i];
        J.hi[i] = ((const double *)b[9].view.buf)[i];
    }
    J.pixel0 = b[5].view.buf;
    J.step_u = b[6].view.buf;
    J.step_v = b[7].view.buf;
    J.skip_first = b[10].view.buf;
    J.skip_last = b[11].view.buf;
    J.nb_a = b[10].view.shape[1];
    J.nb_b = b[10].view.shape[2];
    J.out = b[12].view.buf;
    J.nv = b[12].view.shape[0];
    J.nu = b[12].view.shape[1];
    Scratch S;
    S.base = malloc((size_t)longest * sizeof *S.base);
    S.wa = malloc((size_t)longest * sizeof *S.wa);
    S.wb = malloc((size_t)longest * sizeof *S.wb);
    if (!S.base || !S.wa || !S.wb) {
        free(S.base), free(S.wa), free(S.wb);
        release(b, 13);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    cast(&J, row_first, row_step, &S, have_avx2);
    Py_END_ALLOW_THREADS
    free(S.base), free(S.wa), free(S.wb);
    release(b, 13);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"cast_rows", cast_rows, METH_VARARGS,
     "cast_rows(voxels, strides_xyz, shape_xyz, room_to_index, source, pixel0, step_u, step_v, "
     "box_lo, box_hi, skip_first, skip_last, row_first, row_step, out): line integrals of "
     "detector rows row_first, row_first + row_step, ... into out (float32 [v, u])"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_raycast",
                                    "The DRR ray caster, compiled (imaging/drr.py).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__raycast(void) {
#ifdef HAVE_TILES
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2"); /* the CPU's and the OS's (ymm state saved) */
#endif
    PyObject *mod = PyModule_Create(&module);
    if (mod && PyModule_AddIntConstant(mod, "SKIP_BLOCK", SKIP_BLOCK) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
