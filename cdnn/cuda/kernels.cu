// cdnn's CUDA kernels: the element-wise work around cuBLAS's GEMMs, one template for float and
// double (T), compiled at first use by NVRTC (cupy.RawModule; the names NVRTC instantiates are
// listed in cdnn/cuda/kernels.py).
//
// The same file compiles as C++ (g++) under host_shim.h, which runs a launch's grid of threads
// one after another on the CPU; the tests check every kernel there against the numpy references
// of the CPU kernels (tests/reference.py). So every kernel here is written for that:
//   - element-wise kernels are grid-stride loops over their elements: any grid covers them;
//   - no shared memory, no barriers, no atomics, no warp intrinsics; a reduction is a fixed
//     split into per-thread partial sums (a thread's own slot), then a second pass over those.
// Sums therefore run in a fixed order: a step is deterministic for a given launch shape.
//
// Shapes are row-major, as in src/: a batch's activations are (rows, cols), W is (n_in, n_out).
// Codes of activations and losses are src/activations.pxd's and src/losses.pxd's.
// Per-step values a CUDA graph cannot bake in (learning rate, step number) are read from device
// memory: lrs[s] and step0[0] + s + 1 for the run's step s. status[0] is the run's failure
// (src/step.pxd's Status, 0: none), status[1] the step that failed; once it is set, updates
// stop, so the parameters keep the last good step (or the failed update, which the engine
// restores from its copy).

typedef unsigned long long u64;

enum { IDENTITY = 0, RELU = 1, LEAKY_RELU = 2, SIGMOID = 3, TANH = 4, GELU = 5 };
enum { SOFTMAX_CROSS_ENTROPY = 0, SIGMOID_CROSS_ENTROPY = 1, MEAN_SQUARED_ERROR = 2,
       POISSON = 3 };
enum { STEP_OK = 0, LOSS_NOT_FINITE = 1, NORM_NOT_FINITE = 2, UPDATE_NOT_FINITE = 4 };

// --- scalar math in the precision of T (float: expf, never the double routine) ---------------

__device__ inline float exp_t(float x) { return expf(x); }
__device__ inline double exp_t(double x) { return exp(x); }
__device__ inline float log_t(float x) { return logf(x); }
__device__ inline double log_t(double x) { return log(x); }
__device__ inline float log1p_t(float x) { return log1pf(x); }
__device__ inline double log1p_t(double x) { return log1p(x); }
__device__ inline float tanh_t(float x) { return tanhf(x); }
__device__ inline double tanh_t(double x) { return tanh(x); }
__device__ inline float erf_t(float x) { return erff(x); }
__device__ inline double erf_t(double x) { return erf(x); }
__device__ inline float sqrt_t(float x) { return sqrtf(x); }
__device__ inline double sqrt_t(double x) { return sqrt(x); }

template <typename T> __device__ inline bool bad(T x) { return x - x != 0; }   // NaN or ±inf

template <typename T> __device__ inline T sigmoid(T x) {
    // 1 / (1 + e^-x) without overflow for large |x|
    if (x >= 0) return 1 / (1 + exp_t(-x));
    T e = exp_t(x);
    return e / (1 + e);
}

// the launch's threads, and this one's place among them (1-D grids)
__device__ inline long long first_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ inline long long stride() { return (long long)gridDim.x * blockDim.x; }

// --- gather: a batch's rows by index ---------------------------------------------------------

// dst (rows, cols) := src[idx[i]] for each row i (X rows, dense targets, sample weights)
template <typename T>
__global__ void gather_rows(T* dst, const T* src, const long long* idx, long long rows,
                            int cols) {
    for (long long e = first_index(); e < rows * cols; e += stride()) {
        long long i = e / cols, j = e - i * cols;
        dst[e] = src[idx[i] * cols + j];
    }
}

__global__ void gather_labels(int* dst, const int* src, const long long* idx, long long rows) {
    for (long long i = first_index(); i < rows; i += stride()) dst[i] = src[idx[i]];
}

// --- activations: forward, and backward fused with the bias gradient --------------------------

template <typename T> __device__ inline T activate(T z, int kind, T slope) {
    switch (kind) {
    case RELU: return z > 0 ? z : 0;
    case LEAKY_RELU: return z > 0 ? z : slope * z;
    case SIGMOID: return sigmoid(z);
    case TANH: return tanh_t(z);
    case GELU: return (T)0.5 * z * (1 + erf_t(z * (T)0.7071067811865476));   // z·Φ(z), exact
    default: return z;
    }
}

// f'(z) from the output a (and, for GELU, the pre-activation z)
template <typename T> __device__ inline T derivative(T a, T z, int kind, T slope) {
    switch (kind) {
    case RELU: return a > 0 ? 1 : 0;
    case LEAKY_RELU: return a > 0 ? 1 : slope;
    case SIGMOID: return a * (1 - a);
    case TANH: return 1 - a * a;
    case GELU:      // Φ(z) + z·φ(z)
        return (T)0.5 * (1 + erf_t(z * (T)0.7071067811865476))
               + z * (T)0.3989422804014327 * exp_t((T)-0.5 * z * z);
    default: return 1;
    }
}

// z, a (rows, cols), b (cols,): z := z + b (kept only for GELU, whose backward reads z);
// a := f(z + b). z may be a.
template <typename T>
__global__ void bias_activation(T* z, T* a, const T* b, long long rows, int cols, int kind,
                                T slope) {
    for (long long e = first_index(); e < rows * cols; e += stride()) {
        T v = z[e] + b[e % cols];
        if (kind == GELU) z[e] = v;
        a[e] = activate(v, kind, slope);
    }
}

// x (n,) := f(x): the loss's link on predictions (sigmoid), any activation
template <typename T>
__global__ void activation_inplace(T* x, long long n, int kind, T slope) {
    for (long long e = first_index(); e < n; e += stride()) x[e] = activate(x[e], kind, slope);
}

// d (rows, cols) is dL/da on entry, dL/dz on exit: d := d·f'(z); with it, the bias gradient's
// column sums over chunks of chunk_rows rows, chunk c's into partial[c·cols + j] (then
// sum_chunks; with a single chunk partial may be db itself). One thread per (chunk, column):
// neighbouring threads read neighbouring columns.
template <typename T>
__global__ void activation_backward_bias(T* d, const T* a, const T* z, long long rows, int cols,
                                         int kind, T slope, T* partial, long long chunk_rows) {
    long long chunks = (rows + chunk_rows - 1) / chunk_rows;
    for (long long e = first_index(); e < chunks * cols; e += stride()) {
        long long c = e / cols, j = e - c * cols, end = (c + 1) * chunk_rows;
        T sum = 0;
        for (long long i = c * chunk_rows; i < (end < rows ? end : rows); ++i) {
            long long at = i * cols + j;
            T v = d[at] * derivative(a[at], z[at], kind, slope);
            d[at] = v;
            sum += v;
        }
        partial[e] = sum;
    }
}

// db (cols,) (+)= Σ_c partial[c·cols + j], in chunk order
template <typename T>
__global__ void sum_chunks(T* db, const T* partial, long long chunks, int cols, int accumulate) {
    for (long long j = first_index(); j < cols; j += stride()) {
        T sum = accumulate ? db[j] : 0;
        for (long long c = 0; c < chunks; ++c) sum += partial[c * cols + j];
        db[j] = sum;
    }
}

// --- dropout: the mask is a hash of (seed, step, unit), as src/dropout.pxd ---------------------

__device__ inline double uniform(u64 seed, u64 step, u64 index) {
    u64 x = seed + 0x9E3779B97F4A7C15ULL * (step + 1) + 0xD1B54A32D192ED03ULL * index;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    x = x ^ (x >> 31);
    return (x >> 11) * (1.0 / 9007199254740992.0);     // 53 random bits / 2^53
}

// out (rows, cols) := a · keep / (1 − rate), keep ~ Bernoulli(1 − rate), for the step
// step0[0] + s + 1 (whose masks use its number − 1, as the CPU's); out may be a (the backward
// pass applies the same mask to d in place)
template <typename T>
__global__ void dropout(T* out, const T* a, long long rows, int cols, double rate, u64 seed,
                        const long long* step0, int s) {
    T scale = 1 / (1 - rate);
    u64 step = (u64)(step0[0] + s);
    for (long long e = first_index(); e < rows * cols; e += stride())
        out[e] = uniform(seed, step, (u64)e) >= rate ? a[e] * scale : 0;
}

// --- losses fused with the output delta (src/losses.pxd): one thread per row --------------------

template <typename T>
__device__ inline double softmax_row(const T* z, int label, const T* t, T w, T scale, T* delta,
                                     int k) {
    T m = z[0], s = 0;
    for (int j = 1; j < k; ++j) if (z[j] > m) m = z[j];
    for (int j = 0; j < k; ++j) s += exp_t(z[j] - m);
    T lse = m + log_t(s), t_sum = 0;
    double loss = 0;
    if (t == 0) {       // (m − z_y) + log s: exact when the loss is small
        loss = (m - z[label]) + log_t(s);
        t_sum = 1;
    } else {
        for (int j = 0; j < k; ++j) {
            loss += t[j] * (lse - z[j]);
            t_sum += t[j];
        }
    }
    for (int j = 0; j < k; ++j) {
        T tj = t == 0 ? (T)(label == j ? 1 : 0) : t[j];
        delta[j] = scale * w * (exp_t(z[j] - lse) * t_sum - tj);
    }
    return loss;
}

// ℓ(y, t) of one output and target, and *grad := dℓ/dy (src/losses.pxd's element_loss)
template <typename T> __device__ inline double element_loss(int loss, T y, T t, T* grad) {
    if (loss == SIGMOID_CROSS_ENTROPY) {
        *grad = sigmoid(y) - t;
        return (y > 0 ? y : 0) - y * t + log1p_t(exp_t(y > 0 ? -y : y));
    }
    if (loss == POISSON) {
        T mu = exp_t(y);
        *grad = mu - t;
        return (t > 0 ? t * (log_t(t) - y) - t : 0) + mu;
    }
    T r = y - t;
    *grad = 2 * r;
    return r * r;
}

// Σ w over correct predictions of one row (src/losses.pxd's count_correct)
template <typename T>
__device__ inline double row_correct(int loss, const T* z, int label, const T* t, int k) {
    if (loss == MEAN_SQUARED_ERROR || loss == POISSON) return 0;
    if (loss == SOFTMAX_CROSS_ENTROPY) {
        int best = 0;
        for (int j = 1; j < k; ++j) if (z[j] > z[best]) best = j;
        if (t == 0) return best == label ? 1 : 0;
        for (int j = 0; j < k; ++j) if (t[j] > t[best]) return 0;   // a top target is correct
        return 1;
    }
    double hits = 0;
    for (int j = 0; j < k; ++j) hits += (z[j] > 0) == (t[j] > (T)0.5) ? 1 : 0;
    return hits / k;
}

// out, delta (rows, k); labels (rows,) or targets (rows, k) (the other NULL); weights (rows,)
// or NULL. stats[2i] := w·ℓ of row i, stats[2i + 1] := w if it is predicted correctly;
// delta := scale·w·dℓ/dout, scale = scale_at[0] (loss_scale).
template <typename T>
__global__ void loss_delta(int loss, const T* out, const int* labels, const T* targets,
                           const T* weights, const T* scale_at, T* delta, double* stats,
                           long long rows, int k) {
    T scale = scale_at[0];
    for (long long i = first_index(); i < rows; i += stride()) {
        const T* z = out + i * k;
        const T* t = targets != 0 ? targets + i * k : 0;
        int label = labels != 0 ? labels[i] : -1;
        T w = weights != 0 ? weights[i] : 1, g;
        double row = 0;
        if (loss == SOFTMAX_CROSS_ENTROPY) {
            row = softmax_row(z, label, t, w, scale, delta + i * k, k);
        } else {
            for (int j = 0; j < k; ++j) {
                row += element_loss(loss, z[j], t[j], &g);
                delta[i * k + j] = scale * w * g;
            }
        }
        stats[2 * i] = w * row;
        stats[2 * i + 1] = row_correct(loss, z, label, t, k) * w;
    }
}

// scale[0] := 1 / (Σw, or rows) (× k for the element-wise losses); 0 when every weight is 0.
// One thread.
template <typename T>
__global__ void loss_scale(const T* weights, long long rows, int k_factor, T* scale) {
    if (first_index() != 0) return;
    double total = (double)rows;
    if (weights != 0) {
        total = 0;
        for (long long i = 0; i < rows; ++i) total += weights[i];
    }
    total *= k_factor;
    scale[0] = total > 0 ? (T)(1 / total) : (T)0;
}

// --- sums: a fixed split into per-thread partials, then their sum ------------------------------

// thread j < m: out[j] := Σ_t in[j + t·m] (in order); pairs: in and out are (·, 2) pairs
__global__ void strided_sum(const double* in, long long n, double* out, int m, int pairs) {
    for (long long j = first_index(); j < m; j += stride()) {
        double s0 = 0, s1 = 0;
        for (long long i = j; i < n; i += m) {
            if (pairs) {
                s0 += in[2 * i];
                s1 += in[2 * i + 1];
            } else {
                s0 += in[i];
            }
        }
        if (pairs) {
            out[2 * j] = s0;
            out[2 * j + 1] = s1;
        } else {
            out[j] = s0;
        }
    }
}

// partial[thread] := Σ x² over the thread's grid-stride elements (the gradient's norm)
template <typename T>
__global__ void sum_squares(const T* x, long long n, double* partial) {
    double s = 0;
    for (long long i = first_index(); i < n; i += stride()) s += (double)x[i] * x[i];
    partial[first_index()] = s;
}

// dW += l2·W (n elements); partial[thread] := Σ W² over its elements (the penalty l2/2·ΣW²)
template <typename T>
__global__ void l2_gradient(T* dW, const T* W, long long n, T l2, double* partial) {
    double s = 0;
    for (long long i = first_index(); i < n; i += stride()) {
        s += (double)W[i] * W[i];
        dW[i] += l2 * W[i];
    }
    partial[first_index()] = s;
}

// One thread, after the loss: sums[0..1] are Σ w·ℓ and Σ correct over the batch (pairs), penalty
// (or NULL) Σ W²: losses[s] := scale·Σ w·ℓ + l2/2·ΣW², corrects[s] := Σ correct; a loss that is
// not finite fails the step (unless an earlier one failed). gscale[0] := 1 for the update.
template <typename T>
__global__ void finish_loss(const double* sums, const T* scale, const double* penalty, double l2,
                            double* losses, double* corrects, int s, int* status,
                            double* gscale) {
    if (first_index() != 0) return;
    double loss = (double)scale[0] * sums[0];
    if (penalty != 0) loss += 0.5 * l2 * penalty[0];
    losses[s] = loss;
    corrects[s] = sums[1];
    gscale[0] = 1;
    if (status[0] == STEP_OK && bad(loss)) {
        status[0] = LOSS_NOT_FINITE;
        status[1] = s;
    }
}

// One thread: the global norm ‖gscale·g‖ (sumsq[0] = Σg²) clipped to clip_norm, by gscale
// (src/step.pxd's clip)
__global__ void clip_scale(const double* sumsq, double clip_norm, double* gscale, int s,
                           int* status) {
    if (first_index() != 0) return;
    double norm = sqrt(sumsq[0]) * gscale[0];
    if (bad(norm)) {
        if (status[0] == STEP_OK) {
            status[0] = NORM_NOT_FINITE;
            status[1] = s;
        }
    } else if (norm > clip_norm) {
        gscale[0] *= clip_norm / (norm + 1e-6);
    }
}

// --- optimizer updates over the flat buffer (src/optim.pxd: PyTorch's order of operations) ----
// p, g and the state have one layout of n elements; g·gscale is the step's gradient. A run
// whose status is set updates nothing; an update that makes a value non-finite sets it.

__device__ inline bool failed(const int* status) { return *(volatile const int*)status != 0; }

__device__ inline void fail_update(int* status, int s) {
    // every thread that finds a bad value stores the same two words: no atomics needed
    status[0] = UPDATE_NOT_FINITE;
    status[1] = s;
}

// g += wd·p; buf = μ·buf + g; g = g + μ·buf (Nesterov) or buf; p −= lr·g
template <typename T>
__global__ void sgd_update(T* p, const T* g, T* buf, long long n, const double* lrs, int s,
                           const double* gscale_at, int* status, T mu, T wd, int nesterov) {
    if (failed(status)) return;
    T lr = (T)lrs[s], gscale = (T)gscale_at[0];
    for (long long i = first_index(); i < n; i += stride()) {
        T gi = g[i] * gscale + wd * p[i];
        if (mu != 0) {
            buf[i] = mu * buf[i] + gi;
            gi = nesterov ? gi + mu * buf[i] : buf[i];
        }
        T pi = p[i] - lr * gi;
        p[i] = pi;
        if (bad(pi)) fail_update(status, s);
    }
}

// m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p −= lr/(1−β1ᵗ)·m/(√v/√(1−β2ᵗ) + ε), or with
// eps_inside (scikit-learn's) ε added to √v before the correction; decoupled (AdamW):
// p ·= 1 − lr·wd instead of g += wd·p
template <typename T>
__global__ void adam_update(T* p, const T* g, T* m, T* v, long long n, const double* lrs,
                            const long long* step0, int s, const double* gscale_at, int* status,
                            double beta1, double beta2, double eps_, T wd, int eps_inside,
                            int decoupled) {
    if (failed(status)) return;
    long long t = step0[0] + s + 1;
    T lr = (T)lrs[s], gscale = (T)gscale_at[0], b1 = (T)beta1, b2 = (T)beta2;
    T eps_v = eps_inside ? (T)eps_ : 0, eps = eps_inside ? 0 : (T)eps_;
    T step_size = (T)((double)lr / (1 - pow(beta1, (double)t)));
    T bc2_sqrt = sqrt_t((T)(1 - pow(beta2, (double)t)));
    T shrink = 1 - lr * wd;
    for (long long i = first_index(); i < n; i += stride()) {
        T gi = g[i] * gscale, pi = p[i];
        if (decoupled) pi = pi * shrink;
        else gi = gi + wd * pi;
        T mi = m[i] + (gi - m[i]) * (1 - b1);
        T vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        pi = pi - step_size * (mi / ((sqrt_t(vi) + eps_v) / bc2_sqrt + eps));
        p[i] = pi;
        if (bad(pi) || bad(vi)) fail_update(status, s);   // an overflowed g² would stall p
    }
}

// g += wd·p; sq = α·sq + (1−α)·g²; buf = μ·buf + g/(√sq + ε); p −= lr·buf (or the step itself
// without momentum)
template <typename T>
__global__ void rmsprop_update(T* p, const T* g, T* sq, T* buf, long long n, const double* lrs,
                               int s, const double* gscale_at, int* status, T alpha, T eps, T mu,
                               T wd) {
    if (failed(status)) return;
    T lr = (T)lrs[s], gscale = (T)gscale_at[0];
    for (long long i = first_index(); i < n; i += stride()) {
        T gi = g[i] * gscale + wd * p[i];
        T si = alpha * sq[i] + (1 - alpha) * gi * gi;
        sq[i] = si;
        T step = gi / (sqrt_t(si) + eps);
        if (mu > 0) {
            buf[i] = mu * buf[i] + step;
            step = buf[i];
        }
        T pi = p[i] - lr * step;
        p[i] = pi;
        if (bad(pi) || bad(si)) fail_update(status, s);
    }
}

// --- predictions -----------------------------------------------------------------------------

// x (rows, k) := softmax of each row, in place (one thread per row)
template <typename T>
__global__ void softmax_rows(T* x, long long rows, int k) {
    for (long long i = first_index(); i < rows; i += stride()) {
        T* z = x + i * k;
        T m = z[0], s = 0;
        for (int j = 1; j < k; ++j) if (z[j] > m) m = z[j];
        for (int j = 0; j < k; ++j) {
            z[j] = exp_t(z[j] - m);
            s += z[j];
        }
        for (int j = 0; j < k; ++j) z[j] /= s;
    }
}

// flag[0] := 1 if any of x (n,) is NaN or ±inf (flag zeroed by the caller); stores of the same
// value from several threads need no atomics
template <typename T>
__global__ void find_nonfinite(const T* x, long long n, int* flag) {
    for (long long i = first_index(); i < n; i += stride()) if (bad(x[i])) flag[0] = 1;
}
