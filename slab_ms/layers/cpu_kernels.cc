// Native CPU kernels for eval-mode forwards, loaded through mindspore.ops.Custom(func_type="aot").
// Each function has the aot signature (nparam, params, ndims, shapes, dtypes, stream, extra): the inputs'
// pointers, then the output's; it returns 0 on success, anything else makes MindSpore raise. A kernel splits its
// work over SLAB_MS_NATIVE_THREADS threads (default: one per CPU), MindSpore's own op threads being idle while it
// runs; small calls stay on the calling thread.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

typedef float v8f __attribute__((vector_size(32)));

static int64_t native_threads() {
  static const int64_t threads = [] {
    const char *env = std::getenv("SLAB_MS_NATIVE_THREADS");
    const int64_t n = env ? std::atoll(env) : static_cast<int64_t>(std::thread::hardware_concurrency());
    return std::max<int64_t>(1, n);
  }();
  return threads;
}

// f(begin, end) over [0, n) in contiguous chunks, one per thread; work: the multiply-adds of all n items (below
// about 2^18 a thread costs more than it saves).
template <class F>
static void parallel_for(int64_t n, double work, F f) {
  const int64_t threads = std::min<int64_t>({native_threads(), n, static_cast<int64_t>(work / (1 << 18)) + 1});
  if (threads <= 1) {
    f(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(f, n * t / threads, n * (t + 1) / threads);
  f(int64_t{0}, n / threads);
  for (auto &thread : pool) thread.join();
}

static bool all_float32(int n, const char **dtypes) {
  for (int i = 0; i < n; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

static inline v8f load8(const float *p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

static inline void store8(float *p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

// Four interior output pixels (all K taps of a row inside the map) of 8 channels over kernel rows a0..a1−1: each
// input row's K + 3 pixels are loaded once and each tap's weights once for the four. src: the input pixel of kernel
// row a0, column x − K/2; tp: tap-major weights.
template <int K>
static inline void four_pixels(const float *src, int64_t row_stride, int64_t pixel_stride, const float *tp, int64_t C,
                               v8f bias, float *out, int64_t out_stride, int64_t a0, int64_t a1) {
  v8f acc[4] = {bias, bias, bias, bias};
  for (int64_t a = a0; a < a1; ++a) {
    v8f window[K + 3];
    for (int e = 0; e < K + 3; ++e) window[e] = load8(src + (a - a0) * row_stride + e * pixel_stride);
    for (int bb = 0; bb < K; ++bb) {
      const v8f w = load8(tp + (a * K + bb) * C);
      for (int p = 0; p < 4; ++p) acc[p] += window[p + bb] * w;
    }
  }
  for (int p = 0; p < 4; ++p) store8(out + p * out_stride, acc[p]);
}

// Depth-wise k×k convolution, stride 1, zero padding k/2, of row-major tokens x (B, H, W, G, C) with weight
// (C, 1, k, k) and bias (C,), written to out (B, H, W, G, C): the G channel groups share the C filters.
static void depthwise_conv(const float *x, const float *weight, const float *bias, float *out, int64_t B, int64_t H,
                           int64_t W, int64_t G, int64_t C, int64_t k) {
  const int64_t r = k / 2, GC = G * C;
  std::vector<float> taps(k * k * C);  // tap-major: taps[(a·k + b)·C + c] = weight[c, 0, a, b]
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < k * k; ++t) taps[t * C + c] = weight[c * k * k + t];
  const float *tp = taps.data();
  parallel_for(B * H, double(B * H) * W * GC * k * k, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / H, y = row % H;
      const int64_t a0 = std::max<int64_t>(0, r - y), a1 = std::min<int64_t>(k, H + r - y);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < C; ++c) {
          const bool vector = c + 8 <= C;
          const float *xc = x + b * H * W * GC + g * C + c;  // this image's channel c; pixel (y', x') at (y'·W + x')·GC
          float *oc = out + row * W * GC + g * C + c;
          auto pixel = [&](int64_t xo) {  // one output pixel of 8 channels (or 1 in the channel tail)
            const int64_t b0 = std::max<int64_t>(0, r - xo), b1 = std::min<int64_t>(k, W + r - xo);
            if (vector) {
              v8f acc = load8(bias + c);
              for (int64_t a = a0; a < a1; ++a)
                for (int64_t bb = b0; bb < b1; ++bb)
                  acc += load8(xc + ((y + a - r) * W + xo + bb - r) * GC) * load8(tp + (a * k + bb) * C + c);
              store8(oc + xo * GC, acc);
            } else {
              float acc = bias[c];
              for (int64_t a = a0; a < a1; ++a)
                for (int64_t bb = b0; bb < b1; ++bb)
                  acc += xc[((y + a - r) * W + xo + bb - r) * GC] * tp[(a * k + bb) * C + c];
              oc[xo * GC] = acc;
            }
          };
          int64_t xo = 0;
          for (; xo < std::min(r, W); ++xo) pixel(xo);
          if (vector && (k == 3 || k == 5 || k == 7)) {
            auto four = k == 3 ? four_pixels<3> : k == 5 ? four_pixels<5> : four_pixels<7>;
            for (; xo + 4 + r <= W; xo += 4)
              four(xc + ((y + a0 - r) * W + xo - r) * GC, W * GC, GC, tp + c, C, load8(bias + c), oc + xo * GC, GC, a0,
                   a1);
          }
          for (; xo < W; ++xo) pixel(xo);
          if (vector) c += 7;
        }
    }
  });
}

static bool depthwise_shapes_ok(int64_t **shapes, int weight_at, int64_t C) {
  const int64_t *w = shapes[weight_at];
  return w[0] == C && w[1] == 1 && w[2] == w[3] && w[3] % 2 == 1 && shapes[weight_at + 1][0] == C;
}

// The depth-wise conv above as an op: x (B, H, W, G, C), weight (C, 1, k, k), bias (C,) -> out (B, H, W, G, C).
extern "C" int DepthwiseConvTokens(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  if (nparam != 4 || ndims[0] != 5 || ndims[1] != 4 || ndims[2] != 1 || !all_float32(4, dtypes)) return 1;
  const int64_t *s = shapes[0];
  if (!depthwise_shapes_ok(shapes, 1, s[4])) return 1;
  depthwise_conv(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                 static_cast<const float *>(params[2]), static_cast<float *>(params[3]), s[0], s[1], s[2], s[3], s[4],
                 shapes[1][3]);
  return 0;
}

// out[t·ldo + 8u + 0..7] += scale[t] · Σ_{i < depth} a[t·a_row + i·a_depth] · m[i·ldm + 8u + 0..7] for t < R, u < V:
// R rows of a (rows a_row floats apart, depth steps a_depth) times an 8V-column slice of m, in R·V vector registers.
// Both SLA products: Kᵀ V (the rows of Kᵀ are columns of the packed K block) and Q (Kᵀ V).
template <int R, int V>
static inline void block_product(const float *a, int64_t a_row, int64_t a_depth, const float *m, int64_t ldm,
                                 int64_t depth, const float *scale, float *out, int64_t ldo) {
  v8f acc[R][V] = {};
  for (int64_t i = 0; i < depth; ++i) {
    v8f col[V];
    for (int u = 0; u < V; ++u) col[u] = load8(m + i * ldm + 8 * u);
    for (int t = 0; t < R; ++t) {
      const float s = a[t * a_row + i * a_depth];
      for (int u = 0; u < V; ++u) acc[t][u] += s * col[u];
    }
  }
  for (int t = 0; t < R; ++t)
    for (int u = 0; u < V; ++u) {
      float *o = out + t * ldo + 8 * u;
      store8(o, load8(o) + acc[t][u] * scale[t]);
    }
}

// out[n] += scale[n] · a[n] · m for the rows n of the (rows, D) a that fill whole R-row blocks, m (D, D); returns how
// many rows that was (the caller finishes the rest one row at a time).
template <int R, int V>
static int64_t rows_times_matrix(const float *a, int64_t rows, const float *m, int64_t D, const float *scale,
                                 float *out, int64_t ldo) {
  int64_t n = 0;
  for (; n + R <= rows; n += R)
    for (int64_t j = 0; j < D; j += 8 * V)
      block_product<R, V>(a + n * D, D, 1, m + j, D, D, scale + n, out + n * ldo + j, ldo);
  return n;
}

constexpr int64_t kTokenBlock = 128;  // tokens packed at a time: a (128, head_dim) block stays in L1 / L2

// SLA of one head: out[n] += ReLU(q_n) · KV / (ReLU(q_n) · Σ_j K_j + 1e-6), KV = Σ_j K_jᵀ v_j, K_j = ReLU(k_j + p_j),
// for N tokens of D channels, consecutive tokens `stride` floats apart in q, k, v, p and out. scratch: D·D + D +
// kTokenBlock·(D + 1) floats.
static void sla_head(const float *q, const float *k, const float *v, const float *p, float *out, int64_t N,
                     int64_t D, int64_t stride, float *scratch) {
  float *kv = scratch, *ksum = kv + D * D, *block = ksum + D, *z = block + kTokenBlock * D;
  std::fill(kv, kv + D * D + D, 0.0f);
  const bool vector = D % 16 == 0;
  for (int64_t n0 = 0; n0 < N; n0 += kTokenBlock) {  // KV and Σ K, one block of tokens at a time
    const int64_t rows = std::min(kTokenBlock, N - n0);
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t i = 0; i < D; ++i) {
        const int64_t at = (n0 + n) * stride + i;
        const float kk = std::max(k[at] + p[at], 0.0f);
        block[n * D + i] = kk;
        ksum[i] += kk;
      }
    const float *vb = v + n0 * stride;
    if (vector) {
      static const float ones[4] = {1.0f, 1.0f, 1.0f, 1.0f};
      for (int64_t i = 0; i < D; i += 4)  // KV[i..i+3, j..j+15] += block[:, i..i+3]ᵀ · v[:, j..j+15]
        for (int64_t j = 0; j < D; j += 16)
          block_product<4, 2>(block + i, 1, D, vb + j, stride, rows, ones, kv + i * D + j, D);
    } else {
      for (int64_t n = 0; n < rows; ++n)
        for (int64_t i = 0; i < D; ++i)
          for (int64_t j = 0; j < D; ++j) kv[i * D + j] += block[n * D + i] * vb[n * stride + j];
    }
  }
  for (int64_t n0 = 0; n0 < N; n0 += kTokenBlock) {  // out += ReLU(Q) · KV / z, one block of tokens at a time
    const int64_t rows = std::min(kTokenBlock, N - n0);
    for (int64_t n = 0; n < rows; ++n) {
      float *row = block + n * D;
      for (int64_t i = 0; i < D; ++i) row[i] = std::max(q[(n0 + n) * stride + i], 0.0f);
      // ReLU(q_n) · Σ K in 8 partial sums (a single running sum would serialise on the add latency)
      float partial[8] = {};
      int64_t i = 0;
      for (; i + 8 <= D; i += 8)
        for (int u = 0; u < 8; ++u) partial[u] += row[i + u] * ksum[i + u];
      float dot = 1e-6f;
      for (; i < D; ++i) dot += row[i] * ksum[i];
      for (int u = 0; u < 8; ++u) dot += partial[u];
      z[n] = 1.0f / dot;  // one division per token, not per channel
    }
    float *ob = out + n0 * stride;
    const int64_t n = D % 32 == 0 ? rows_times_matrix<3, 4>(block, rows, kv, D, z, ob, stride)
                      : D % 16 == 0 ? rows_times_matrix<4, 2>(block, rows, kv, D, z, ob, stride) : 0;
    for (int64_t t = n; t < rows; ++t)
      for (int64_t j = 0; j < D; ++j) {
        float acc = 0.0f;
        for (int64_t i = 0; i < D; ++i) acc += block[t * D + i] * kv[i * D + j];
        ob[t * stride + j] += acc * z[t];
      }
  }
}

// Simplified linear attention of one image or window, per head, with its depth-wise conv on v:
//   out_n = ReLU(q_n) · Σ_j ReLU(k_j + p_j)ᵀ v_j / (ReLU(q_n) · Σ_j ReLU(k_j + p_j) + 1e-6)  +  DWC(v)_n
// q, k, v (B, H, W, G, D) with G heads of D channels, p (1, H, W, G, D), weight (D, 1, k, k), bias (D,) -> out
// (B, H, W, G, D). Kᵀ V is formed first for every head (no block-diagonal mask, no (B, N, N) scores).
extern "C" int SimplifiedLinearAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                         void *, void *) {
  if (nparam != 7 || !all_float32(7, dtypes)) return 1;
  for (int i = 0; i < 4; ++i)
    if (ndims[i] != 5) return 1;
  if (ndims[4] != 4 || ndims[5] != 1) return 1;
  const int64_t *s = shapes[0];
  const int64_t B = s[0], N = s[1] * s[2], G = s[3], D = s[4], GD = G * D;
  for (int i = 1; i < 3; ++i)
    for (int d = 0; d < 5; ++d)
      if (shapes[i][d] != s[d]) return 1;
  if (shapes[3][0] != 1) return 1;
  for (int d = 1; d < 5; ++d)
    if (shapes[3][d] != s[d]) return 1;
  if (!depthwise_shapes_ok(shapes, 4, D)) return 1;
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *p = static_cast<const float *>(params[3]);
  float *out = static_cast<float *>(params[6]);
  depthwise_conv(v, static_cast<const float *>(params[4]), static_cast<const float *>(params[5]), out, B, s[1], s[2],
                 G, D, shapes[4][3]);
  parallel_for(B * G, 4.0 * B * G * N * D * D, [&](int64_t first, int64_t last) {
    std::vector<float> scratch(D * D + D + kTokenBlock * (D + 1));
    for (int64_t item = first; item < last; ++item) {
      const int64_t offset = (item / G) * N * GD + (item % G) * D;
      sla_head(q + offset, k + offset, v + offset, p + (item % G) * D, out + offset, N, D, GD, scratch.data());
    }
  });
  return 0;
}

// erf(x) = x·P(x²)/Q(x²) on [-4, 4], ±1 beyond (exact in float32 there): the rational approximation of
// Eigen and XLA, within 4.3e-7 of the true erf (a few float32 ulps of 1).
template <typename T>
static inline T erf_rational(T v, T lo, T hi) {
  T x = v < lo ? lo : v;
  x = x > hi ? hi : x;
  const T x2 = x * x;
  T p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  T q = x2 * -1.45660718464996e-05f - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

// Exact (erf) GELU, x·(1 + erf(x/√2))/2, element-wise over a float32 tensor of any shape (|Δerf| ≤ 4.3e-7,
// so |ΔGELU| ≤ 2.2e-7·|x| + rounding).
extern "C" int ExactGelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                         void *) {
  if (nparam != 2 || !all_float32(2, dtypes)) return 1;
  int64_t n = 1;
  for (int i = 0; i < ndims[0]; ++i) n *= shapes[0][i];
  const float *__restrict x = static_cast<const float *>(params[0]);
  float *__restrict out = static_cast<float *>(params[1]);
  const v8f lo = {-4, -4, -4, -4, -4, -4, -4, -4}, hi = -lo;
  const float sqrt_half = 0.70710678118654752f;
  const int64_t blocks = (n + 1023) / 1024;  // 1024-value chunks, multiples of the vector width
  parallel_for(blocks, 16.0 * n, [&](int64_t first, int64_t last) {
    int64_t i = first * 1024;
    const int64_t end = std::min<int64_t>(n, last * 1024);
    for (; i + 8 <= end; i += 8) {
      const v8f v = load8(x + i);
      store8(out + i, 0.5f * v * (1.0f + erf_rational(v * sqrt_half, lo, hi)));
    }
    for (; i < end; ++i) out[i] = 0.5f * x[i] * (1.0f + erf_rational(x[i] * sqrt_half, -4.0f, 4.0f));
  });
  return 0;
}
