// Native CPU kernels for eval-mode forwards, loaded through mindspore.ops.Custom(func_type="aot").
// Each function has the aot signature (nparam, params, ndims, shapes, dtypes, stream, extra): the inputs'
// pointers, then the output's; it returns 0 on success, anything else makes MindSpore raise. They run on the
// calling thread: MindSpore's own op threads keep the cores busy, and extra threads only queued behind them
// (measured on a loaded 2-core machine: one thread 9.4 ms, two 22.6 ms for the same work).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

typedef float v8f __attribute__((vector_size(32)));

static bool all_float32(int n, const char **dtypes) {
  for (int i = 0; i < n; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

// Depth-wise k×k convolution, stride 1, zero padding k/2, of row-major tokens.
// x (B, H, W, G, C), weight (C, 1, k, k), bias (C,) -> out (B, H, W, G, C): the G channel groups share the C filters.
extern "C" int DepthwiseConvTokens(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  if (nparam != 4 || ndims[0] != 5 || ndims[1] != 4 || ndims[2] != 1 || !all_float32(4, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  const int64_t B = shapes[0][0], H = shapes[0][1], W = shapes[0][2], G = shapes[0][3], C = shapes[0][4];
  const int64_t k = shapes[1][3], r = k / 2, GC = G * C;
  if (shapes[1][0] != C || shapes[1][1] != 1 || shapes[1][2] != k || k % 2 == 0 || shapes[2][0] != C) return 1;
  std::vector<float> taps(k * k * C);  // tap-major: taps[(a·k + b)·C + c] = weight[c, 0, a, b]
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < k * k; ++t) taps[t * C + c] = weight[c * k * k + t];
  const float *tp = taps.data();
  for (int64_t row = 0; row < B * H; ++row) {
    const int64_t b = row / H, y = row % H;
    const int64_t a0 = std::max<int64_t>(0, r - y), a1 = std::min<int64_t>(k, H + r - y);
    for (int64_t xo = 0; xo < W; ++xo) {
      const int64_t b0 = std::max<int64_t>(0, r - xo), b1 = std::min<int64_t>(k, W + r - xo);
      float *o = out + (row * W + xo) * GC;
      for (int64_t g = 0; g < G; ++g) {
        int64_t c = 0;
        for (; c + 8 <= C; c += 8) {  // 8 channels accumulate in registers over all taps
          v8f acc;
          std::memcpy(&acc, bias + c, sizeof(acc));
          for (int64_t a = a0; a < a1; ++a) {
            const float *src = x + ((b * H + y + a - r) * W + xo - r) * GC + g * C + c;
            const float *w = tp + a * k * C + c;
            for (int64_t bb = b0; bb < b1; ++bb) {
              v8f s, wv;
              std::memcpy(&s, src + bb * GC, sizeof(s));
              std::memcpy(&wv, w + bb * C, sizeof(wv));
              acc += s * wv;
            }
          }
          std::memcpy(o + g * C + c, &acc, sizeof(acc));
        }
        for (; c < C; ++c) {
          float acc = bias[c];
          for (int64_t a = a0; a < a1; ++a)
            for (int64_t bb = b0; bb < b1; ++bb)
              acc += x[((b * H + y + a - r) * W + xo + bb - r) * GC + g * C + c] * tp[(a * k + bb) * C + c];
          o[g * C + c] = acc;
        }
      }
    }
  }
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
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f v;
    std::memcpy(&v, x + i, sizeof(v));
    const v8f y = 0.5f * v * (1.0f + erf_rational(v * sqrt_half, lo, hi));
    std::memcpy(out + i, &y, sizeof(y));
  }
  for (; i < n; ++i) out[i] = 0.5f * x[i] * (1.0f + erf_rational(x[i] * sqrt_half, -4.0f, 4.0f));
  return 0;
}
