/* The CPU kernel of fastclr.augment: crop + resize + flip + colour of whole views, one view
 * at a time, in cache.
 *
 * fastclr.augment's tensor pipeline runs each op over a chunk of views (some thirty-five
 * passes over memory at 96 px, twenty of them for hue); on a CPU the passes, not the
 * arithmetic, set its speed. This kernel does the same arithmetic per view: the y resampling
 * of one output row (all channels) straight from the uint8 image, its x resampling into a
 * per-view float buffer that stays in L1/L2, then one vectorised loop each for contrast with
 * saturation, for hue and for grayscale, and a clamped store into the output, any strides.
 *
 * Semantics are those of fastclr/augment/engine.py (`_apply_chunk`) and colour.py, which
 * follow torchvision per image; tests/augment/ checks this kernel against that code
 * and against torchvision. Everything per view that does not touch pixels (the resampling
 * taps, colour factors) is computed by engine.py and passed in.
 *
 * Python: fastclr.augment._cpu.apply(*ints), pointers and sizes in the order of `parse`; the
 * GIL is released while the kernel runs, so several threads can each take a range of views.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* ITU-R 601-2 luma weights, as fastclr.augment.GRAY_WEIGHTS and torchvision. */
#define WR 0.2989f
#define WG 0.587f
#define WB 0.114f

/* Per-function CPU dispatch: an AVX2 clone and a baseline one, picked by CPU features at load
 * time ("arch=haswell" would test the CPU model, which AMD chips with AVX2 fail). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FAST_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FAST_CLONES
#endif

typedef struct {
    const uint8_t *images;      /* (N, C, H, W) contiguous */
    int64_t N, C, H, W;
    int64_t S;                  /* output side */
    int64_t ky, kx;             /* taps per output row / column */
    const int64_t *y_index;     /* (V, S, ky) input row of each tap */
    const float *y_weight;      /* (V, S, ky), times 1/255 and the brightness factor */
    const int64_t *x_index;     /* (V, S, kx) input column of each tap (flip included) */
    const float *x_weight;      /* (V, S, kx) */
    const float *contrast;      /* (V,) factor c, or NULL: no jitter (and no brightness clamp) */
    const float *saturation;    /* (V,) 1 - s, or NULL */
    const float *hue;           /* (V,) shift in sixths of a turn, or NULL */
    const float *gray;          /* (V,) 1.0 where converted to grayscale, or NULL */
    float *out;                 /* (V, C, S, S) with strides below, in elements */
    int64_t out_stride[4];
    int64_t view_start, view_stop;
} Job;

/* min and max as compare-and-select, which the compiler turns into vector min/max */
static inline float min2(float a, float b) { return a < b ? a : b; }
static inline float max2(float a, float b) { return a > b ? a : b; }
static inline float clamp01(float v) { return min2(max2(v, 0.0f), 1.0f); }

/* Resample view v into z (C, S, S) contiguous; rows is scratch of C * W floats. Returns
 * nothing; channel sums (for contrast) go to sums[C]. */
FAST_CLONES
static void resample(const Job *j, int64_t v, float *z, float *row, double *sums) {
    const int64_t C = j->C, H = j->H, W = j->W, S = j->S, ky = j->ky, kx = j->kx;
    const uint8_t *img = j->images + (v % j->N) * C * H * W;
    const int64_t *yi = j->y_index + v * S * ky, *xi = j->x_index + v * S * kx;
    const float *yw = j->y_weight + v * S * ky, *xw = j->x_weight + v * S * kx;
    const int clamp_now = j->contrast != NULL;     /* brightness's clamp */
    for (int64_t c = 0; c < C; c++) sums[c] = 0.0;
    for (int64_t i = 0; i < S; i++) {
        for (int64_t c = 0; c < C; c++) {
            const uint8_t *plane = img + c * H * W;
            float *r = row + c * W;
            const uint8_t *a = plane + yi[i * ky] * W;
            const float wa = yw[i * ky];
            for (int64_t x = 0; x < W; x++) r[x] = wa * (float)a[x];
            for (int64_t t = 1; t < ky; t++) {
                const uint8_t *b = plane + yi[i * ky + t] * W;
                const float wb = yw[i * ky + t];
                for (int64_t x = 0; x < W; x++) r[x] += wb * (float)b[x];
            }
            float *o = z + (c * S + i) * S;
            float acc = 0.0f;
            for (int64_t x = 0; x < S; x++) {
                const int64_t *ix = xi + x * kx;
                const float *wx = xw + x * kx;
                float s = wx[0] * r[ix[0]];
                for (int64_t t = 1; t < kx; t++) s += wx[t] * r[ix[t]];
                if (clamp_now) s = clamp01(s);
                o[x] = s;
                acc += s;
            }
            sums[c] += acc;
        }
    }
}

/* Contrast, saturation, hue and grayscale of one view, in place on z (C, P). Each step is one
 * unit-stride loop over the view's pixels, written branch-free so that it vectorises. */
FAST_CLONES
static void colour(const Job *j, int64_t v, float *restrict z, const double *sums) {
    const int64_t C = j->C, P = j->S * j->S;
    float c_factor = 1.0f, c_add = 0.0f;
    if (j->contrast) {
        /* blend with the mean luma of the (brightness-adjusted) view */
        double mean = C == 3 ? (WR * sums[0] + WG * sums[1] + WB * sums[2]) / P : sums[0] / P;
        c_factor = j->contrast[v];
        c_add = (1.0f - c_factor) * (float)mean;
        if (C == 1)
            for (int64_t p = 0; p < P; p++) z[p] = clamp01(c_factor * z[p] + c_add);
    }
    if (C == 1) return;
    float *restrict zr = z, *restrict zg = z + P, *restrict zb = z + 2 * P;
    const float sat = j->saturation ? j->saturation[v] : 0.0f;
    for (int64_t p = 0; p < P; p++) {
        const float r = clamp01(c_factor * zr[p] + c_add);
        const float g = clamp01(c_factor * zg[p] + c_add);
        const float b = clamp01(c_factor * zb[p] + c_add);
        const float l = WR * r + WG * g + WB * b;          /* saturation: z + (1 - s)(l - z) */
        zr[p] = clamp01(r + sat * (l - r));
        zg[p] = clamp01(g + sat * (l - g));
        zb[p] = clamp01(b + sat * (l - b));
    }
    const float sixths = j->hue ? j->hue[v] : 0.0f;
    if (sixths != 0.0f) {
        /* HSV hue rotation keeping S and V: each channel is m + C clamp(2 - d, 0, 1), d the
         * circular distance (in sixths of a turn) of the hue from the channel's own hue */
        for (int64_t p = 0; p < P; p++) {
            const float r = zr[p], g = zg[p], b = zb[p];
            const float mx = max2(max2(r, g), b), mn = min2(min2(r, g), b);
            const float ch = mx - mn;
            const float inv = 1.0f / (ch > 0.0f ? ch : 1.0f);      /* grey: h is not used */
            /* the hue formula of the first maximal channel of r, g, b (torchvision) */
            const float h_r = (g - b) * inv, h_g = 2.0f + (b - r) * inv;
            const float h_b = 4.0f + (r - g) * inv;
            float h = r == mx ? h_r : (g == mx ? h_g : h_b);
            h += sixths;
            h -= floorf(h * (1.0f / 6.0f)) * 6.0f;                       /* into [0, 6) */
            const float base = mn - ch;
            const float tr = min2(max2(fabsf(fabsf(h) - 3.0f), 1.0f), 2.0f);
            const float tg = min2(max2(fabsf(fabsf(h - 2.0f) - 3.0f), 1.0f), 2.0f);
            const float tb = min2(max2(fabsf(fabsf(h - 4.0f) - 3.0f), 1.0f), 2.0f);
            zr[p] = tr * ch + base;
            zg[p] = tg * ch + base;
            zb[p] = tb * ch + base;
        }
    }
    if (j->gray && j->gray[v] != 0.0f) {
        for (int64_t p = 0; p < P; p++) {
            const float l = WR * zr[p] + WG * zg[p] + WB * zb[p];
            zr[p] = l;
            zg[p] = l;
            zb[p] = l;
        }
    }
}

/* The final clamp of z (C, S, S) into view v of out, whatever out's strides. */
FAST_CLONES
static void store(const Job *j, int64_t v, const float *restrict z) {
    const int64_t C = j->C, S = j->S;
    const int64_t s0 = j->out_stride[0], s1 = j->out_stride[1];
    const int64_t s2 = j->out_stride[2], s3 = j->out_stride[3];
    float *out = j->out + v * s0;
    for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < S; i++) {
            const float *restrict zi = z + (c * S + i) * S;
            float *restrict o = out + c * s1 + i * s2;
            if (s3 == 1)
                for (int64_t x = 0; x < S; x++) o[x] = clamp01(zi[x]);
            else
                for (int64_t x = 0; x < S; x++) o[x * s3] = clamp01(zi[x]);
        }
}

static int run(const Job *j) {
    const int64_t C = j->C, S = j->S;
    float *z = malloc(sizeof(float) * (size_t)(C * S * S + C * j->W));
    if (z == NULL) return -1;
    float *row = z + C * S * S;
    double sums[3];
    for (int64_t v = j->view_start; v < j->view_stop; v++) {
        resample(j, v, z, row, sums);
        colour(j, v, z, sums);
        store(j, v, z);
    }
    free(z);
    return 0;
}

static int parse(PyObject *args, Job *j) {
    unsigned long long images, yi, yw, xi, xw, con, sat, hue, gray, out;
    long long N, C, H, W, S, ky, kx, s0, s1, s2, s3, start, stop;
    if (!PyArg_ParseTuple(args, "KLLLLLLLKKKKKKKKKLLLLLL", &images, &N, &C, &H, &W, &S,
                          &ky, &kx, &yi, &yw, &xi, &xw, &con, &sat, &hue, &gray, &out,
                          &s0, &s1, &s2, &s3, &start, &stop))
        return -1;
    if ((C != 1 && C != 3) || N < 1 || H < 1 || W < 1 || S < 1 || ky < 1 || kx < 1 ||
        start < 0 || stop < start) {
        PyErr_SetString(PyExc_ValueError, "fastclr.augment._cpu: bad sizes");
        return -1;
    }
    j->images = (const uint8_t *)(uintptr_t)images;
    j->N = N; j->C = C; j->H = H; j->W = W; j->S = S; j->ky = ky; j->kx = kx;
    j->y_index = (const int64_t *)(uintptr_t)yi;
    j->y_weight = (const float *)(uintptr_t)yw;
    j->x_index = (const int64_t *)(uintptr_t)xi;
    j->x_weight = (const float *)(uintptr_t)xw;
    j->contrast = (const float *)(uintptr_t)con;
    j->saturation = (const float *)(uintptr_t)sat;
    j->hue = (const float *)(uintptr_t)hue;
    j->gray = (const float *)(uintptr_t)gray;
    j->out = (float *)(uintptr_t)out;
    j->out_stride[0] = s0; j->out_stride[1] = s1; j->out_stride[2] = s2; j->out_stride[3] = s3;
    j->view_start = start; j->view_stop = stop;
    return 0;
}

static PyObject *apply(PyObject *self, PyObject *args) {
    Job j;
    int rc;
    (void)self;
    if (parse(args, &j) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = run(&j);
    Py_END_ALLOW_THREADS
    if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"apply", apply, METH_VARARGS,
     "apply(images, N, C, H, W, S, ky, kx, y_index, y_weight, x_index, x_weight, contrast, "
     "saturation, hue, gray, out, *out_strides, view_start, view_stop): pointers are ints "
     "(0 for an op that is off); called by fastclr.augment, which checks every argument."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu",
    "CPU kernel of fastclr.augment (crop, resize, flip, colour per view).", -1, methods,
};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module); }
