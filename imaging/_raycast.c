/*
 * The DRR ray caster (imaging/drr.py `_cast_rows`), compiled ahead of time.
 *
 * Why C and not a JIT: igrtd runs under systemd's MemoryDenyWriteExecute=yes
 * (systemd/igrtd.service), which forbids the writable-then-executable memory a
 * JIT such as numba needs; an extension module built by `pip install` is mapped
 * like any shared library (built by setup.py). The arithmetic is the Python
 * reference's (tests/imaging2d4d/raycast_reference.py), step for step: float32
 * positions and weights, two float32 running sums; the compiler may fuse a
 * multiply and an add, so the two agree to float32 rounding (the tests hold them
 * together).
 *
 * Joseph's method: a ray is stepped one voxel plane at a time along its dominant
 * index axis k, sampled bilinearly in the other two (a, b); the sum times the ray
 * length per plane is its line integral. Planes outside the tissue of the
 * columns the ray passes are skipped (skip tables, SKIP_BLOCK columns a cell).
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

static void cast(const Job *J, Py_ssize_t row_first, Py_ssize_t row_step,
                 uint32_t *restrict base, float *restrict wa, float *restrict wb) {
    const double (*m)[4] = J->m;
    const double *s = J->s;
    for (Py_ssize_t r = row_first; r < J->nv; r += row_step) {
        for (Py_ssize_t c = 0; c < J->nu; c++) {
            /* ray = source + t w, t in [0, 1] from the source to the detector pixel */
            double wx = J->pixel0[0] + c * J->step_u[0] + r * J->step_v[0] - J->src[0];
            double wy = J->pixel0[1] + c * J->step_u[1] + r * J->step_v[1] - J->src[1];
            double wz = J->pixel0[2] + c * J->step_u[2] + r * J->step_v[2] - J->src[2];
            double d[3] = {m[0][0] * wx + m[0][1] * wy + m[0][2] * wz,
                           m[1][0] * wx + m[1][1] * wy + m[1][2] * wz,
                           m[2][0] * wx + m[2][1] * wy + m[2][2] * wz};
            float *o = &J->out[r * J->nu + c];
            *o = 0.0f;
            int k = 0;
            for (int ax = 0; ax < 3; ax++)
                if (fabs(d[ax]) > fabs(d[k])) k = ax;
            if (fabs(d[k]) < 1e-12) continue;
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
            if (t1 <= t0) continue;
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
            int64_t first = NO_TISSUE, last = -1;
            for (int64_t ba = a_lo; ba <= a_hi; ba++)
                for (int64_t bb = b_lo; bb <= b_hi; bb++) {
                    Py_ssize_t q = ((Py_ssize_t)k * J->nb_a + ba) * J->nb_b + bb;
                    if (J->skip_first[q] < first) first = J->skip_first[q];
                    if (J->skip_last[q] > last) last = J->skip_last[q];
                }
            if (first > i0) i0 = first;
            if (last < i1) i1 = last;
            int64_t count = i1 - i0 + 1;
            if (count <= 0) continue;
            /* pass 1 (vectorises: locals, restrict, 32-bit indices as the volume
             * has < 2^31 voxels): flat index and weights of every sample, float32
             * positions, clamped so that every read (and its +1 neighbours) stays inside */
            const float pa0 = (float)(ca + i0 * ra), pb0 = (float)(cb + i0 * rb);
            const float fra = (float)ra, frb = (float)rb, fta = (float)top_a, ftb = (float)top_b;
            const int32_t b0 = (int32_t)(i0 * J->stride[k]), isk = (int32_t)J->stride[k];
            const int32_t isa = (int32_t)J->stride[a], isb = (int32_t)J->stride[b];
            const int32_t cnt = (int32_t)count;
            for (int32_t j = 0; j < cnt; j++) {
                float pa = fclamp(pa0 + (float)j * fra, 0.0f, fta);
                float pb = fclamp(pb0 + (float)j * frb, 0.0f, ftb);
                int32_t ia = (int32_t)pa, ib = (int32_t)pb;
                wa[j] = pa - (float)ia;
                wb[j] = pb - (float)ib;
                base[j] = (uint32_t)(b0 + j * isk + ia * isa + ib * isb);
            }
            /* pass 2: gather and interpolate */
            const float *restrict v = J->vox;
            const uint64_t ua = (uint64_t)isa, ub = (uint64_t)isb, uab = ua + ub;
            /* two running sums (even and odd samples), as the reference does */
            float even = 0.0f, odd = 0.0f;
            for (int32_t h = 0; h < cnt / 2; h++) {
                int32_t j = 2 * h;
                even += bilinear(v, base[j], wa[j], wb[j], ua, ub, uab);
                odd += bilinear(v, base[j + 1], wa[j + 1], wb[j + 1], ua, ub, uab);
            }
            if (cnt % 2) even += bilinear(v, base[cnt - 1], wa[cnt - 1], wb[cnt - 1], ua, ub, uab);
            float total = even + odd;
            double length = sqrt(wx * wx + wy * wy + wz * wz);
            *o = (float)((double)total / fabs(d[k]) * length);
        }
    }
}

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
    uint32_t *base = malloc((size_t)longest * sizeof *base);
    float *wa = malloc((size_t)longest * sizeof *wa), *wb = malloc((size_t)longest * sizeof *wb);
    if (!base || !wa || !wb) {
        free(base), free(wa), free(wb);
        release(b, 13);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    cast(&J, row_first, row_step, base, wa, wb);
    Py_END_ALLOW_THREADS
    free(base), free(wa), free(wb);
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
    PyObject *mod = PyModule_Create(&module);
    if (mod && PyModule_AddIntConstant(mod, "SKIP_BLOCK", SKIP_BLOCK) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
