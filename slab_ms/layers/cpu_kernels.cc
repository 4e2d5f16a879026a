// Native CPU kernels (forwards and the backwards of the training path), loaded through mindspore.ops.Custom(func_type="aot").
// Each function has the aot signature (nparam, params, ndims, shapes, dtypes, stream, extra): the inputs'
// pointers, then the output's; it returns 0 on success, anything else makes MindSpore raise. A kernel splits its
// work over SLAB_MS_NATIVE_THREADS threads (default: one per CPU), MindSpore's own op threads being idle while it
// runs; small calls stay on the calling thread.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static int64_t native_threads() {
  static const int64_t threads = [] {
    const char *env = std::getenv("SLAB_MS_NATIVE_THREADS");
    const int64_t n = env ? std::atoll(env) : static_cast<int64_t>(std::thread::hardware_concurrency());
    return std::max<int64_t>(1, n);
  }();
  return threads;
}

// The threads that run parallel_for's chunks besides the caller, started on first use and kept: starting a thread
// per call costs 50-100 µs, as much as a whole kernel on one image. Between calls a worker sleeps: spinning for the
// next call takes a core from MindSpore's own op threads (DeiT-T at one image: 18.6 ms per forward with a 100 µs
// spin, 15.7 without). One parallel_for at a time uses them; a call made while they are busy (MindSpore running two
// kernels at once, or a nested call) runs on its caller alone.
class WorkerPool {
 public:
  explicit WorkerPool(int64_t workers) {
    for (int64_t w = 1; w <= workers; ++w) std::thread([this, w] { serve(w); }).detach();
    size_ = workers;
  }

  // task(context, t) for t in [0, parts), t = 0 on the caller; returns when every part has run. False, running
  // nothing, when another call holds the workers.
  bool run(int64_t parts, void (*task)(void *, int64_t), void *context) {
    std::unique_lock<std::mutex> held(busy_, std::try_to_lock);
    if (!held) return false;
    task_ = task, context_ = context, parts_ = parts;
    pending_.store(size_, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    task(context, 0);
    while (pending_.load(std::memory_order_acquire) != 0) __builtin_ia32_pause();
    return true;
  }

 private:
  void serve(int64_t index) {
    pthread_setname_np(pthread_self(), "slab_ms_kernel");
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
      }
      if (index < parts_) task_(context_, index);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  int64_t size_ = 0, parts_ = 0;
  void (*task_)(void *, int64_t) = nullptr;
  void *context_ = nullptr;
  std::mutex busy_, wake_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> pending_{0};
};

// The one pool of the library (never destroyed: its threads outlive main).
static WorkerPool &worker_pool() {
  static WorkerPool *pool = new WorkerPool(native_threads() - 1);
  return *pool;
}

// f(begin, end) over [0, n) in contiguous chunks, one per thread; work: the multiply-adds of all n items (below
// about 2^18 a second thread costs more than it saves).
template <class F>
static void parallel_for(int64_t n, double work, F f) {
  const int64_t threads = std::min<int64_t>({native_threads(), n, static_cast<int64_t>(work / (1 << 18)) + 1});
  if (threads <= 1) {
    f(int64_t{0}, n);
    return;
  }
  auto chunk = [&](int64_t t) { f(n * t / threads, n * (t + 1) / threads); };
  using Chunk = decltype(chunk);
  if (!worker_pool().run(threads, [](void *c, int64_t t) { (*static_cast<Chunk *>(c))(t); }, &chunk)) f(int64_t{0}, n);
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

// Keeps a loaded vector in a register. Without it GCC folds the load into every FMA that uses the vector, and the
// small products below become bound by loads instead of multiply-adds.
static inline void in_register(v8f &v) {
#if defined(__x86_64__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// Four interior output pixels (all K taps of a row inside the map) of 8 channels over kernel rows a0..a1−1: each
// input row's K + 3 pixels are loaded once and each tap's weights once for the four. src: the input pixel of kernel
// row a0, column x − K/2; tp: tap-major weights.
template <int K>
static inline void four_pixels(const float *src, int64_t row_stride, int64_t pixel_stride, const float *tp, int64_t C,
                               v8f bias, float *out, int64_t out_stride, int64_t a0, int64_t a1) {
  v8f acc[4] = {bias, bias, bias, bias};
  for (int64_t a = a0; a < a1; ++a) {
    v8f window[K + 3];
    for (int e = 0; e < K + 3; ++e) {
      window[e] = load8(src + (a - a0) * row_stride + e * pixel_stride);
      in_register(window[e]);
    }
    for (int bb = 0; bb < K; ++bb) {
      const v8f w = load8(tp + (a * K + bb) * C);
      for (int p = 0; p < 4; ++p) acc[p] += window[p + bb] * w;
    }
  }
  for (int p = 0; p < 4; ++p) store8(out + p * out_stride, acc[p]);
}

// Tap-major copy of a (C, 1, k, k) depth-wise weight: taps[(a·k + b)·C + c] = weight[c, 0, a, b].
static std::vector<float> tap_major(const float *weight, int64_t C, int64_t k) {
  std::vector<float> taps(k * k * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < k * k; ++t) taps[t * C + c] = weight[c * k * k + t];
  return taps;
}

// Output row y of the depth-wise k×k convolution (stride 1, zero padding k/2) of one image x (H, W, G, C), pixels
// `ld` floats apart, with tap-major weights tp and bias (C,): out (W, G, C), the G channel groups sharing the C
// filters. Interior pixels go four at a time, all channels of one four-pixel block before the next (its input stays
// in L1).
static void depthwise_row(const float *x, int64_t ld, const float *tp, const float *bias, float *out, int64_t y,
                          int64_t H, int64_t W, int64_t G, int64_t C, int64_t k) {
  const int64_t r = k / 2, GC = G * C;
  const int64_t a0 = std::max<int64_t>(0, r - y), a1 = std::min<int64_t>(k, H + r - y);
  auto pixel = [&](int64_t xo, int64_t c, bool vector) {  // one output pixel of 8 channels (or 1)
    const int64_t b0 = std::max<int64_t>(0, r - xo), b1 = std::min<int64_t>(k, W + r - xo);
    const float *xc = x + c;
    if (vector) {
      v8f acc = load8(bias + c % C);
      for (int64_t a = a0; a < a1; ++a)
        for (int64_t bb = b0; bb < b1; ++bb)
          acc += load8(xc + ((y + a - r) * W + xo + bb - r) * ld) * load8(tp + (a * k + bb) * C + c % C);
      store8(out + xo * GC + c, acc);
    } else {
      float acc = bias[c % C];
      for (int64_t a = a0; a < a1; ++a)
        for (int64_t bb = b0; bb < b1; ++bb)
          acc += xc[((y + a - r) * W + xo + bb - r) * ld] * tp[(a * k + bb) * C + c % C];
      out[xo * GC + c] = acc;
    }
  };
  auto all_channels = [&](int64_t xo) {
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < C;) {
        const bool vector = c + 8 <= C;
        pixel(xo, g * C + c, vector);
        c += vector ? 8 : 1;
      }
  };
  int64_t xo = 0;
  for (; xo < std::min(r, W); ++xo) all_channels(xo);
  if (k == 3 || k == 5 || k == 7) {
    auto four = k == 3 ? four_pixels<3> : k == 5 ? four_pixels<5> : four_pixels<7>;
    for (; xo + 4 + r <= W; xo += 4)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = 0; c < C;) {
          if (c + 8 <= C) {
            four(x + ((y + a0 - r) * W + xo - r) * ld + g * C + c, W * ld, ld, tp + c, C, load8(bias + c),
                 out + xo * GC + g * C + c, GC, a0, a1);
            c += 8;
          } else {
            for (int64_t p = 0; p < 4; ++p) pixel(xo + p, g * C + c, false);
            ++c;
          }
        }
  }
  for (; xo < W; ++xo) all_channels(xo);
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
  const int64_t B = s[0], H = s[1], W = s[2], G = s[3], C = s[4], k = shapes[1][3], GC = G * C;
  const float *x = static_cast<const float *>(params[0]), *bias = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  const std::vector<float> taps = tap_major(static_cast<const float *>(params[1]), C, k);
  parallel_for(B * H, double(B * H) * W * GC * k * k, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row)
      depthwise_row(x + (row / H) * H * W * GC, GC, taps.data(), bias, out + row * W * GC, row % H, H, W, G, C, k);
  });
  return 0;
}

#if defined(__AVX512F__)
typedef float v16f __attribute__((vector_size(64)));

static inline void in_register(v16f &v) { asm("" : "+v"(v)); }
#endif

// out[t·ldo + Lu + 0..L−1] += scale[t] · Σ_{i < depth} a[t·a_row + i·a_depth] · m[i·ldm + Lu + 0..L−1] for t < R,
// u < V, with L the floats of a Vec (8: AVX2, 16: AVX-512): R rows of a (rows a_row floats apart, depth steps
// a_depth) times an L·V-column slice of m, in R·V vector registers. The SLA products: Kᵀ V (the rows of Kᵀ are
// columns of the packed K block) and Q (Kᵀ V); the softmax attention's QKᵀ and P V.
template <typename Vec, int R, int V>
static inline void block_product(const float *a, int64_t a_row, int64_t a_depth, const float *m, int64_t ldm,
                                 int64_t depth, const float *scale, float *out, int64_t ldo) {
  constexpr int L = sizeof(Vec) / sizeof(float);
  Vec acc[R][V] = {};
  for (int64_t i = 0; i < depth; ++i) {
    Vec col[V];
    for (int u = 0; u < V; ++u) {
      std::memcpy(&col[u], m + i * ldm + L * u, sizeof(Vec));
      in_register(col[u]);
    }
    for (int t = 0; t < R; ++t) {
      const float s = a[t * a_row + i * a_depth];
      for (int u = 0; u < V; ++u) acc[t][u] += s * col[u];
    }
  }
  for (int t = 0; t < R; ++t)
    for (int u = 0; u < V; ++u) {
      float *o = out + t * ldo + L * u;
      Vec sum;
      std::memcpy(&sum, o, sizeof(Vec));
      sum += acc[t][u] * scale[t];
      std::memcpy(o, &sum, sizeof(Vec));
    }
}

// block_product over `rows` rows of a (Tall at a time, then 4, 2, 1) times one 2L-column slice of m: with AVX2's
// 16 registers 6 × 2 accumulators, two columns and a broadcast (Tall 6); with AVX-512's 32, 12 × 2 (Tall 12).
template <typename Vec, int Tall>
static void strip_product(const float *a, int64_t a_row, int64_t a_depth, int64_t rows, const float *m, int64_t ldm,
                          int64_t depth, const float *scale, float *out, int64_t ldo) {
  int64_t t = 0;
  auto rows_from_t = [&](auto product, int r) {  // one block_product<Vec, r, 2> of rows t .. t + r − 1
    product(a + t * a_row, a_row, a_depth, m, ldm, depth, scale + t, out + t * ldo, ldo);
    t += r;
  };
  while (t + Tall <= rows) rows_from_t(block_product<Vec, Tall, 2>, Tall);
  while (t + 4 <= rows) rows_from_t(block_product<Vec, 4, 2>, 4);
  if (t + 2 <= rows) rows_from_t(block_product<Vec, 2, 2>, 2);
  if (t < rows) rows_from_t(block_product<Vec, 1, 2>, 1);
}

constexpr int64_t kTokenBlock = 128;   // about this many tokens (whole image rows) are packed at a time
constexpr int64_t kChunkTokens = 512;  // Kᵀ V and Σ K are summed over chunks of about this many tokens

// The SLA layer of a batch of images: shapes, the token stride of q, k, v, and how the work is cut.
struct SlaProblem {
  int64_t B, H, W, G, D, k, ld;  // ld: floats between consecutive tokens of q, k and v (p and out: G·D)
  int64_t block_rows, blocks, chunk_blocks, chunks;
  SlaProblem(int64_t B, int64_t H, int64_t W, int64_t G, int64_t D, int64_t k, int64_t ld)
      : B(B), H(H), W(W), G(G), D(D), k(k), ld(ld) {
    block_rows = std::max<int64_t>(1, kTokenBlock / W);
    blocks = (H + block_rows - 1) / block_rows;
    chunk_blocks = std::max<int64_t>(1, kChunkTokens / (block_rows * W));
    chunks = (blocks + chunk_blocks - 1) / chunk_blocks;
  }
  int64_t block_tokens() const { return block_rows * W; }
  int64_t kv_size() const { return G * (D * D + D); }  // every head's Kᵀ V (D, D), then every head's Σ K (D)
};

// Pass 1, one chunk of one image: kv (G·D·D) and ksum (G·D) = Σ over the chunk's tokens of K_jᵀ v_j and K_j per head,
// K_j = ReLU(k_j + p_j). q, k, v, p point at the image's first token; block: block_tokens·G·D floats.
static void sla_chunk_sums(const SlaProblem &s, const float *k, const float *v, const float *p, int64_t chunk,
                           float *kv, float *block) {
  const int64_t GD = s.G * s.D, D = s.D;
  float *ksum = kv + s.G * D * D;
  std::fill(kv, kv + s.kv_size(), 0.0f);
  const int64_t first = chunk * s.chunk_blocks * s.block_tokens(), N = s.H * s.W;
  const int64_t last = std::min(N, first + s.chunk_blocks * s.block_tokens());
  const std::vector<float> ones(D, 1.0f);  // the scale of Kᵀ V's rows
  for (int64_t n0 = first; n0 < last; n0 += s.block_tokens()) {
    const int64_t rows = std::min(s.block_tokens(), last - n0);
    for (int64_t n = 0; n < rows; ++n) {
      const float *kn = k + (n0 + n) * s.ld, *pn = p + (n0 + n) * GD, *vn = v + (n0 + n) * s.ld;
      float *bn = block + n * GD;
      for (int64_t c = 0; c < GD; c += 16) __builtin_prefetch(vn + c);  // v's rows arrive while K is packed
      for (int64_t c = 0; c < GD; ++c) {
        const float kk = std::max(kn[c] + pn[c], 0.0f);
        bn[c] = kk;
        ksum[c] += kk;
      }
    }
    const float *vb = v + n0 * s.ld;
    for (int64_t g = 0; g < s.G; ++g) {
      float *kvg = kv + g * D * D;
      const float *bg = block + g * D, *vg = vb + g * D;
      if (D % 16 == 0) {  // kv_g[:, j..j+15] += block_gᵀ · v_g[:, j..j+15]
        for (int64_t j = 0; j < D; j += 16)
          strip_product<v8f, 6>(bg, 1, GD, D, vg + j, s.ld, rows, ones.data(), kvg + j, D);
      } else {
        for (int64_t n = 0; n < rows; ++n)
          for (int64_t i = 0; i < D; ++i)
            for (int64_t j = 0; j < D; ++j) kvg[i * D + j] += bg[n * GD + i] * vg[n * s.ld + j];
      }
    }
  }
}

// Pass 2, one block of image rows: out = DWC(v) + ReLU(q) · KV_g / (ReLU(q) · Σ K_g + 1e-6) per head g, for the
// block's tokens. kv: the image's summed pass-1 result; taps: tap-major DWC weights; scratch: block_tokens·(G·D + G).
static void sla_block_output(const SlaProblem &s, const float *q, const float *v, const float *kv, const float *taps,
                             const float *bias, float *out, int64_t blk, float *scratch) {
  const int64_t GD = s.G * s.D, D = s.D, y0 = blk * s.block_rows, y1 = std::min(s.H, y0 + s.block_rows);
  const int64_t n0 = y0 * s.W, rows = (y1 - y0) * s.W;
  const float *ksum = kv + s.G * D * D;
  float *qr = scratch, *z = scratch + s.block_tokens() * GD;  // ReLU(q) (rows, GD); z (G, rows): 1 / normaliser
  for (int64_t y = y0; y < y1; ++y) depthwise_row(v, s.ld, taps, bias, out + y * s.W * GD, y, s.H, s.W, s.G, D, s.k);
  for (int64_t n = 0; n < rows; ++n) {
    const float *qn = q + (n0 + n) * s.ld;
    float *row = qr + n * GD;
    for (int64_t c = 0; c < GD; ++c) row[c] = std::max(qn[c], 0.0f);
    for (int64_t g = 0; g < s.G; ++g) {
      // ReLU(q_n) · Σ K in 8 partial sums (a single running sum would serialise on the add latency)
      const float *rg = row + g * D, *sg = ksum + g * D;
      float partial[8] = {};
      int64_t i = 0;
      for (; i + 8 <= D; i += 8)
        for (int u = 0; u < 8; ++u) partial[u] += rg[i + u] * sg[i + u];
      float dot = 1e-6f;
      for (; i < D; ++i) dot += rg[i] * sg[i];
      for (int u = 0; u < 8; ++u) dot += partial[u];
      z[g * rows + n] = 1.0f / dot;  // one division per token and head, not per channel
    }
  }
  float *ob = out + n0 * GD;
  for (int64_t g = 0; g < s.G; ++g) {
    const float *ag = qr + g * D, *kvg = kv + g * D * D, *zg = z + g * rows;
    float *og = ob + g * D;
    if (D % 16 == 0) {
      for (int64_t j = 0; j < D; j += 16) strip_product<v8f, 6>(ag, GD, 1, rows, kvg + j, D, D, zg, og + j, GD);
    } else {
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t j = 0; j < D; ++j) {
          float acc = 0.0f;
          for (int64_t i = 0; i < D; ++i) acc += ag[t * GD + i] * kvg[i * D + j];
          og[t * GD + j] += acc * zg[t];
        }
    }
  }
}

// Simplified linear attention with its depth-wise conv on v, per head, of B images (or windows):
//   out_n = ReLU(q_n) · Σ_j ReLU(k_j + p_j)ᵀ v_j / (ReLU(q_n) · Σ_j ReLU(k_j + p_j) + 1e-6)  +  DWC(v)_n
// Pass 1 sums Kᵀ V and Σ K over fixed chunks of tokens, then adds the chunks in order (the same numbers however the
// chunks are shared out); pass 2 writes each block of image rows once, its DWC and its attention together. With at
// least one image per thread each thread takes whole images (an image's q, k, v stay in cache from pass 1 to pass
// 2); otherwise the threads share each image's chunks, then its blocks.
static void simplified_linear_attention(const SlaProblem &s, const float *q, const float *k, const float *v,
                                        const float *p, const float *weight, const float *bias, float *out) {
  const int64_t GD = s.G * s.D, N = s.H * s.W, image = N * s.ld;
  const std::vector<float> taps = tap_major(weight, s.D, s.k);
  std::vector<float> sums(s.B * s.chunks * s.kv_size());
  auto image_sums = [&](int64_t b) { return sums.data() + b * s.chunks * s.kv_size(); };
  auto chunk_sums = [&](int64_t b, int64_t chunk, float *block) {
    sla_chunk_sums(s, k + b * image, v + b * image, p, chunk, image_sums(b) + chunk * s.kv_size(), block);
  };
  auto add_chunks = [&](int64_t b) {
    float *total = image_sums(b);
    for (int64_t c = 1; c < s.chunks; ++c)
      for (int64_t i = 0; i < s.kv_size(); ++i) total[i] += total[c * s.kv_size() + i];
  };
  auto block_output = [&](int64_t b, int64_t blk, float *scratch) {
    sla_block_output(s, q + b * image, v + b * image, image_sums(b), taps.data(), bias, out + b * N * GD, blk,
                     scratch);
  };
  const double pass1_work = 2.0 * N * GD * s.D, pass2_work = N * GD * (2.0 * s.D + s.k * s.k);
  const int64_t block_floats = s.block_tokens() * GD, scratch_floats = s.block_tokens() * (GD + s.G);
  if (s.B >= native_threads()) {
    parallel_for(s.B, s.B * (pass1_work + pass2_work), [&](int64_t first, int64_t last) {
      std::vector<float> scratch(scratch_floats);
      for (int64_t b = first; b < last; ++b) {
        for (int64_t c = 0; c < s.chunks; ++c) chunk_sums(b, c, scratch.data());
        add_chunks(b);
        for (int64_t blk = 0; blk < s.blocks; ++blk) block_output(b, blk, scratch.data());
      }
    });
    return;
  }
  for (int64_t b = 0; b < s.B; ++b) {
    parallel_for(s.chunks, pass1_work, [&](int64_t first, int64_t last) {
      std::vector<float> block(block_floats);
      for (int64_t c = first; c < last; ++c) chunk_sums(b, c, block.data());
    });
    add_chunks(b);
    parallel_for(s.blocks, pass2_work, [&](int64_t first, int64_t last) {
      std::vector<float> scratch(scratch_floats);
      for (int64_t blk = first; blk < last; ++blk) block_output(b, blk, scratch.data());
    });
  }
}

static bool sla_shapes_ok(const int64_t *grid, int64_t **shapes, int pos_at) {
  if (shapes[pos_at][0] != 1) return false;
  for (int d = 1; d < 5; ++d)
    if (shapes[pos_at][d] != grid[d]) return false;
  return depthwise_shapes_ok(shapes, pos_at + 1, grid[4]);
}

// The layer above as an op: q, k, v (B, H, W, G, D) with G heads of D channels, p (1, H, W, G, D), weight
// (D, 1, k, k), bias (D,) -> out (B, H, W, G, D).
extern "C" int SimplifiedLinearAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                         void *, void *) {
  if (nparam != 7 || !all_float32(7, dtypes)) return 1;
  for (int i = 0; i < 4; ++i)
    if (ndims[i] != 5) return 1;
  if (ndims[4] != 4 || ndims[5] != 1) return 1;
  const int64_t *s = shapes[0];
  for (int i = 1; i < 3; ++i)
    for (int d = 0; d < 5; ++d)
      if (shapes[i][d] != s[d]) return 1;
  if (!sla_shapes_ok(s, shapes, 3)) return 1;
  const SlaProblem problem(s[0], s[1], s[2], s[3], s[4], shapes[4][3], s[3] * s[4]);
  simplified_linear_attention(problem, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                              static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                              static_cast<const float *>(params[4]), static_cast<const float *>(params[5]),
                              static_cast<float *>(params[6]));
  return 0;
}

// The same layer reading q, k, v from the qkv projection's output as it is, (B, H, W, 3, G, D) (no split
// into three tensors): p (1, H, W, G, D), weight (D, 1, k, k), bias (D,) -> out (B, H, W, G, D).
extern "C" int SimplifiedLinearAttentionQKV(int nparam, void **params, int *ndims, int64_t **shapes,
                                            const char **dtypes, void *, void *) {
  if (nparam != 5 || !all_float32(5, dtypes)) return 1;
  if (ndims[0] != 6 || ndims[1] != 5 || ndims[2] != 4 || ndims[3] != 1) return 1;
  const int64_t *s = shapes[0];
  const int64_t grid[5] = {s[0], s[1], s[2], s[4], s[5]};
  if (s[3] != 3 || !sla_shapes_ok(grid, shapes, 1)) return 1;
  const int64_t GD = s[4] * s[5];
  const SlaProblem problem(s[0], s[1], s[2], s[4], s[5], shapes[2][3], 3 * GD);
  const float *qkv = static_cast<const float *>(params[0]);
  simplified_linear_attention(problem, qkv, qkv + GD, qkv + 2 * GD, static_cast<const float *>(params[1]),
                              static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                              static_cast<float *>(params[4]));
  return 0;
}

// The element count of input i.
static int64_t element_count(const int *ndims, int64_t **shapes, int i) {
  int64_t n = 1;
  for (int d = 0; d < ndims[i]; ++d) n *= shapes[i][d];
  return n;
}

// C, the last axis of input 0, and n, its element count, where inputs 1 .. vectors are per-channel vectors of
// length C (γ, β, a bias); false if they are not, or C is 0.
static bool channel_shapes(const int *ndims, int64_t **shapes, int vectors, int64_t &C, int64_t &n) {
  C = shapes[0][ndims[0] - 1];
  if (C == 0) return false;
  for (int i = 1; i <= vectors; ++i)
    if (ndims[i] != 1 || shapes[i][0] != C) return false;
  n = element_count(ndims, shapes, 0);
  return true;
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

// GELU(x + bias) of len values (bias: len values, or none).
static void gelu_span(const float *__restrict x, const float *__restrict bias, float *__restrict out, int64_t len) {
  const v8f lo = {-4, -4, -4, -4, -4, -4, -4, -4}, hi = -lo;
  const float sqrt_half = 0.70710678118654752f;
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const v8f v = bias ? load8(x + i) + load8(bias + i) : load8(x + i);
    store8(out + i, 0.5f * v * (1.0f + erf_rational(v * sqrt_half, lo, hi)));
  }
  for (; i < len; ++i) {
    const float v = bias ? x[i] + bias[i] : x[i];
    out[i] = 0.5f * v * (1.0f + erf_rational(v * sqrt_half, -4.0f, 4.0f));
  }
}

// Exact (erf) GELU, x·(1 + erf(x/√2))/2, element-wise over a float32 tensor of any shape (|Δerf| ≤ 4.3e-7,
// so |ΔGELU| ≤ 2.2e-7·|x| + rounding). With a bias, three parameters (x, bias, out): GELU(x + bias), bias along x's
// last axis (the bias of the Dense layer before it, added in the same pass).
static int exact_gelu(bool with_bias, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != (with_bias ? 3 : 2) || !all_float32(nparam, dtypes)) return 1;
  int64_t n = element_count(ndims, shapes, 0);
  const float *x = static_cast<const float *>(params[0]);
  float *out = static_cast<float *>(params[nparam - 1]);
  if (with_bias) {
    int64_t width;
    if (!channel_shapes(ndims, shapes, 1, width, n)) return 1;
    const float *bias = static_cast<const float *>(params[1]);
    parallel_for(n / width, 16.0 * n, [&](int64_t first, int64_t last) {
      for (int64_t row = first; row < last; ++row) gelu_span(x + row * width, bias, out + row * width, width);
    });
    return 0;
  }
  const int64_t blocks = (n + 1023) / 1024;  // 1024-value chunks, multiples of the vector width
  parallel_for(blocks, 16.0 * n, [&](int64_t first, int64_t last) {
    const int64_t begin = first * 1024;
    gelu_span(x + begin, nullptr, out + begin, std::min<int64_t>(n, last * 1024) - begin);
  });
  return 0;
}

// ----- softmax attention (non-causal, no mask) on the packed qkv projection, forward and backward


// e^x of 8 floats, x clamped to [−87.3, 88.3]: 2^n · e^r with n = round(x·log2 e) and |r| ≤ ln 2 / 2, e^r by
// Cephes' degree-6 polynomial (within about 1 ulp of expf).
static inline v8f exp8(v8f x) {
  const v8f lo = {-87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f};
  const v8f hi = {88.3f, 88.3f, 88.3f, 88.3f, 88.3f, 88.3f, 88.3f, 88.3f};
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v8f fx = x * 1.44269504088896341f + 0.5f;
  v8i n = __builtin_convertvector(fx, v8i);  // truncation; one less where that rounded up (negative fx)
  n += __builtin_convertvector(n, v8f) > fx;  // a true comparison is −1
  const v8f fn = __builtin_convertvector(n, v8f);
  const v8f r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  v8f y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  v8f two_n;
  const v8i bits = (n + 127) << 23;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return y * two_n;
}

// out[t·ldo + j] += scale[t] · Σ_{i < depth} a[t·a_row + i·a_depth] · m[i·ldm + j] for t < rows, j < cols:
// 32-column slices of m with AVX-512, 16-column ones (strip_product), a plain loop over the columns left.
static void scaled_product(const float *a, int64_t a_row, int64_t a_depth, int64_t rows, const float *m, int64_t ldm,
                           int64_t cols, int64_t depth, const float *scale, float *out, int64_t ldo) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 32 <= cols; j += 32)
    strip_product<v16f, 12>(a, a_row, a_depth, rows, m + j, ldm, depth, scale, out + j, ldo);
#endif
  for (; j + 16 <= cols; j += 16)
    strip_product<v8f, 6>(a, a_row, a_depth, rows, m + j, ldm, depth, scale, out + j, ldo);
  for (; j < cols; ++j)
    for (int64_t t = 0; t < rows; ++t) {
      float acc = 0.0f;
      for (int64_t i = 0; i < depth; ++i) acc += a[t * a_row + i * a_depth] * m[i * ldm + j];
      out[t * ldo + j] += acc * scale[t];
    }
}

// Softmax attention of B images' G heads of D channels over N tokens; q, k, v: rows `ld` floats apart.
struct SoftmaxProblem {
  int64_t B, N, G, D, ld, padded;  // padded: N rounded up to 16, the row length of the score blocks
  float scale;                     // D^−½
  SoftmaxProblem(int64_t B, int64_t N, int64_t G, int64_t D)
      : B(B), N(N), G(G), D(D), ld(3 * G * D), padded((N + 15) / 16 * 16),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)))) {}
};

// t (D, padded) = xᵀ for x one head's (N, D) rows `ld` floats apart; columns N.. are zero.
static void pack_transposed(const SoftmaxProblem &s, const float *x, float *t) {
  std::fill(t, t + s.D * s.padded, 0.0f);
  for (int64_t j = 0; j < s.N; ++j)
    for (int64_t c = 0; c < s.D; ++c) t[c * s.padded + j] = x[j * s.ld + c];
}

// p (rows, padded) = exp(scale · q_t · k_j − max_j) of `rows` query rows q against kt = Kᵀ (pack_transposed),
// zero beyond column N; inverse_sum[t] = 1 / Σ_j p[t, j] (with `normalise`, p is divided by that sum too).
static void softmax_scores(const SoftmaxProblem &s, const float *q, const float *kt, int64_t rows, const float *scales,
                           float *p, float *inverse_sum, bool normalise) {
  std::fill(p, p + rows * s.padded, 0.0f);
  scaled_product(q, s.ld, 1, rows, kt, s.padded, s.padded, s.D, scales, p, s.padded);
  const int64_t full = s.N / 8 * 8;
  for (int64_t t = 0; t < rows; ++t) {
    float *row = p + t * s.padded;
    v8f tops = load8(row);  // the row maximum over 8 lanes (one running maximum would wait on each comparison)
    for (int64_t j = 8; j < full; j += 8) {
      const v8f x = load8(row + j);
      tops = x > tops ? x : tops;
    }
    float top = row[0];
    for (int u = 0; u < 8 && u < full; ++u) top = std::max(top, tops[u]);
    for (int64_t j = full; j < s.N; ++j) top = std::max(top, row[j]);
    v8f partial = {};
    for (int64_t j = 0; j < full; j += 8) {
      const v8f e = exp8(load8(row + j) - top);
      store8(row + j, e);
      partial += e;
    }
    float sum = 0.0f;
    if (full < s.N) {  // the last partial vector: its columns from N on are padding, set to zero
      const v8f e = exp8(load8(row + full) - top);
      for (int64_t j = full; j < s.N; ++j) {
        row[j] = e[j - full];
        sum += row[j];
      }
      for (int64_t j = s.N; j < full + 8; ++j) row[j] = 0.0f;
    }
    for (int u = 0; u < 8; ++u) sum += partial[u];
    inverse_sum[t] = 1.0f / sum;
    if (normalise)
      for (int64_t j = 0; j < s.N; ++j) row[j] *= inverse_sum[t];
  }
}

// out_n = Σ_j softmax_j(q_n · k_j / √D) v_j per head, query rows cut in blocks of at most 64 (whole blocks per
// thread: the same numbers on any thread count). qkv (B, N, 3, G, D) -> out (B, N, G, D).
static void softmax_attention(const SoftmaxProblem &s, const float *qkv, float *out) {
  const int64_t GD = s.G * s.D, blocks = (s.N + 63) / 64, block_rows = (s.N + blocks - 1) / blocks;
  const std::vector<float> scales(s.padded, s.scale);
  parallel_for(s.B * s.G * blocks, 2.0 * s.B * s.G * s.N * s.N * s.D, [&](int64_t first, int64_t last) {
    std::vector<float> kt(s.D * s.padded), p(block_rows * s.padded), inverse_sum(block_rows);
    int64_t packed = -1;  // the (image, head) whose Kᵀ is in kt
    for (int64_t task = first; task < last; ++task) {
      const int64_t head = task / blocks, b = head / s.G, g = head % s.G;
      const int64_t r0 = task % blocks * block_rows, rows = std::min(block_rows, s.N - r0);
      const float *q = qkv + b * s.N * s.ld + g * s.D, *k = q + GD, *v = q + 2 * GD;
      if (packed != head) pack_transposed(s, k, kt.data()), packed = head;
      softmax_scores(s, q + r0 * s.ld, kt.data(), rows, scales.data(), p.data(), inverse_sum.data(), false);
      float *o = out + (b * s.N + r0) * GD + g * s.D;
      for (int64_t t = 0; t < rows; ++t) std::fill(o + t * GD, o + t * GD + s.D, 0.0f);
      scaled_product(p.data(), s.padded, 1, rows, v, s.ld, s.D, s.N, inverse_sum.data(), o, GD);
    }
  });
}

// Its gradient, one (image, head) per task, P recomputed: with dP = dO Vᵀ and dS = P ∘ (dP − rowsum(dO ∘ O)),
// dQ = dS K / √D, dK = dSᵀ Q / √D, dV = Pᵀ dO, written into d_qkv's (B, N, 3, G, D) layout.
static void softmax_attention_grad(const SoftmaxProblem &s, const float *qkv, const float *out, const float *dout,
                                   float *dqkv) {
  const int64_t GD = s.G * s.D;
  const std::vector<float> scales(s.padded, s.scale), ones(s.padded, 1.0f);
  parallel_for(s.B * s.G, 5.0 * s.B * s.G * s.N * s.N * s.D, [&](int64_t first, int64_t last) {
    std::vector<float> kt(s.D * s.padded), vt(s.D * s.padded), p(s.N * s.padded), ds(s.N * s.padded),
        inverse_sum(s.N);
    for (int64_t head = first; head < last; ++head) {
      const int64_t b = head / s.G, g = head % s.G;
      const float *q = qkv + b * s.N * s.ld + g * s.D, *k = q + GD, *v = q + 2 * GD;
      const float *o = out + b * s.N * GD + g * s.D, *dO = dout + b * s.N * GD + g * s.D;
      float *dq = dqkv + b * s.N * s.ld + g * s.D, *dk = dq + GD, *dv = dq + 2 * GD;
      pack_transposed(s, k, kt.data());
      pack_transposed(s, v, vt.data());
      softmax_scores(s, q, kt.data(), s.N, scales.data(), p.data(), inverse_sum.data(), true);
      std::fill(ds.begin(), ds.end(), 0.0f);
      scaled_product(dO, GD, 1, s.N, vt.data(), s.padded, s.padded, s.D, ones.data(), ds.data(), s.padded);
      for (int64_t i = 0; i < s.N; ++i) {
        float dot = 0.0f;
        for (int64_t c = 0; c < s.D; ++c) dot += dO[i * GD + c] * o[i * GD + c];
        float *dsi = ds.data() + i * s.padded;
        const float *pi = p.data() + i * s.padded;
        for (int64_t j = 0; j < s.padded; ++j) dsi[j] = pi[j] * (dsi[j] - dot);
      }
      for (int64_t i = 0; i < s.N; ++i)
        for (float *d : {dq, dk, dv}) std::fill(d + i * s.ld, d + i * s.ld + s.D, 0.0f);
      scaled_product(ds.data(), s.padded, 1, s.N, k, s.ld, s.D, s.N, scales.data(), dq, s.ld);
      scaled_product(ds.data(), 1, s.padded, s.N, q, s.ld, s.D, s.N, scales.data(), dk, s.ld);
      scaled_product(p.data(), 1, s.padded, s.N, dO, GD, s.D, s.N, ones.data(), dv, s.ld);
    }
  });
}

static bool same_shape(int n, const int64_t *a, const int64_t *b) {
  for (int d = 0; d < n; ++d)
    if (a[d] != b[d]) return false;
  return true;
}

// Softmax attention per head (scale head_dim^−½) of the qkv projection as it is: qkv (B, N, 3, G, D) -> out
// (B, N, G, D), the heads merged.
extern "C" int SoftmaxAttentionQKV(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                                   void *) {
  if (nparam != 2 || !all_float32(2, dtypes) || ndims[0] != 5 || shapes[0][2] != 3) return 1;
  const int64_t *s = shapes[0];
  softmax_attention(SoftmaxProblem(s[0], s[1], s[3], s[4]), static_cast<const float *>(params[0]),
                    static_cast<float *>(params[1]));
  return 0;
}

// Its gradient: qkv (B, N, 3, G, D), out and d_out (B, N, G, D) -> d_qkv (B, N, 3, G, D).
extern "C" int SoftmaxAttentionQKVGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *, void *) {
  if (nparam != 4 || !all_float32(4, dtypes) || ndims[0] != 5 || ndims[1] != 4 || ndims[2] != 4) return 1;
  const int64_t *s = shapes[0];
  const int64_t merged[4] = {s[0], s[1], s[3], s[4]};
  if (s[2] != 3 || !same_shape(4, merged, shapes[1]) || !same_shape(4, merged, shapes[2])) return 1;
  softmax_attention_grad(SoftmaxProblem(s[0], s[1], s[3], s[4]), static_cast<const float *>(params[0]),
                         static_cast<const float *>(params[1]), static_cast<const float *>(params[2]),
                         static_cast<float *>(params[3]));
  return 0;
}

// ----- simplified linear attention, backward

// xᵀ of each of the G (D, D) blocks of x.
static void transpose_blocks(const float *x, int64_t G, int64_t D, float *t) {
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = 0; i < D; ++i)
      for (int64_t j = 0; j < D; ++j) t[g * D * D + j * D + i] = x[g * D * D + i * D + j];
}

// The gradient of SimplifiedLinearAttentionQKV for one image (qkv, dout: its first token; qkv and dq rows 3·G·D
// floats apart). With K = ReLU(k + p), Q = ReLU(q), z = 1 / (Q · ΣK + 1e-6), A = Q (Kᵀ V) per head and
// out = z A + DWC(v): dA = z dO, dz-term d = −z² (dO · A); dQ = dA (KᵀV)ᵀ + d ΣK; d(KᵀV) = Σ Qᵀ dA, d(ΣK) = Σ d Q;
// dK = V d(KᵀV)ᵀ + d(ΣK); dV = K d(KᵀV) + DWCᵀ(dO) (the conv with the flipped kernel). Writes dq, dk, dv into
// dqkv and adds this image's dp (N, G·D), d weight (k·k, D) tap-major and d bias (D) into the sums given.
static void sla_image_grad(const SlaProblem &s, const float *qkv, const float *p, const float *flipped_taps,
                           const float *dout, float *dqkv, float *dp, float *dtaps, float *dbias) {
  const int64_t G = s.G, D = s.D, GD = G * D, N = s.H * s.W, ld = s.ld, k = s.k, r = k / 2;
  std::vector<float> K(N * GD), Q(N * GD), A(N * GD, 0.0f), dA(N * GD), z(N * G), d(N * G), conv(N * GD);
  std::vector<float> kv(G * D * D, 0.0f), kvt(G * D * D), dkv(G * D * D, 0.0f), dkvt(G * D * D), ksum(GD, 0.0f),
      dksum(GD, 0.0f), ones(std::max(N, D), 1.0f), zero_bias(D, 0.0f);
  const float *q = qkv, *kk = qkv + GD, *v = qkv + 2 * GD;
  float *dq = dqkv, *dk = dqkv + GD, *dv = dqkv + 2 * GD;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < GD; ++c) {
      K[n * GD + c] = std::max(kk[n * ld + c] + p[n * GD + c], 0.0f);
      Q[n * GD + c] = std::max(q[n * ld + c], 0.0f);
      ksum[c] += K[n * GD + c];
    }
  for (int64_t g = 0; g < G; ++g) {
    scaled_product(K.data() + g * D, 1, GD, D, v + g * D, ld, D, N, ones.data(), kv.data() + g * D * D, D);
    scaled_product(Q.data() + g * D, GD, 1, N, kv.data() + g * D * D, D, D, D, ones.data(), A.data() + g * D, GD);
  }
  transpose_blocks(kv.data(), G, D, kvt.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      const float *qg = Q.data() + n * GD + g * D, *sg = ksum.data() + g * D, *ag = A.data() + n * GD + g * D;
      const float *og = dout + n * GD + g * D;
      float den = 1e-6f, dot = 0.0f;
      for (int64_t c = 0; c < D; ++c) den += qg[c] * sg[c], dot += og[c] * ag[c];
      const float zz = 1.0f / den;
      z[n * G + g] = zz;
      d[n * G + g] = -zz * zz * dot;
      for (int64_t c = 0; c < D; ++c) dA[n * GD + g * D + c] = zz * og[c];
    }
  for (int64_t n = 0; n < N; ++n)
    for (float *x : {dq, dk, dv}) std::fill(x + n * ld, x + n * ld + GD, 0.0f);
  for (int64_t g = 0; g < G; ++g) {
    scaled_product(dA.data() + g * D, GD, 1, N, kvt.data() + g * D * D, D, D, D, ones.data(), dq + g * D, ld);
    scaled_product(Q.data() + g * D, 1, GD, D, dA.data() + g * D, GD, D, N, ones.data(), dkv.data() + g * D * D, D);
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < D; ++c) {
        const int64_t i = n * GD + g * D + c;
        dksum[g * D + c] += d[n * G + g] * Q[i];
        dq[n * ld + g * D + c] = q[n * ld + g * D + c] > 0.0f ? dq[n * ld + g * D + c] + d[n * G + g] * ksum[g * D + c]
                                                               : 0.0f;
      }
  transpose_blocks(dkv.data(), G, D, dkvt.data());
  for (int64_t g = 0; g < G; ++g) {
    scaled_product(v + g * D, ld, 1, N, dkvt.data() + g * D * D, D, D, D, ones.data(), dk + g * D, ld);
    scaled_product(K.data() + g * D, GD, 1, N, dkv.data() + g * D * D, D, D, D, ones.data(), dv + g * D, ld);
  }
  for (int64_t y = 0; y < s.H; ++y)
    depthwise_row(dout, GD, flipped_taps, zero_bias.data(), conv.data() + y * s.W * GD, y, s.H, s.W, G, D, k);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < GD; ++c) {
      const int64_t i = n * GD + c;
      const float grad = K[i] > 0.0f ? dk[n * ld + c] + dksum[c] : 0.0f;
      dk[n * ld + c] = grad;
      dp[i] += grad;
      dv[n * ld + c] += conv[i];
      dbias[c % D] += dout[i];
    }
  for (int64_t a = 0; a < k; ++a)  // d weight[c, a, b] = Σ dO[y, x, c] · v[y + a − r, x + b − r, c]
    for (int64_t b = 0; b < k; ++b) {
      float *dt = dtaps + (a * k + b) * D;
      for (int64_t y = std::max<int64_t>(0, r - a); y < std::min(s.H, s.H + r - a); ++y)
        for (int64_t x = std::max<int64_t>(0, r - b); x < std::min(s.W, s.W + r - b); ++x) {
          const float *og = dout + (y * s.W + x) * GD, *vg = v + ((y + a - r) * s.W + x + b - r) * ld;
          for (int64_t g = 0; g < G; ++g)
            for (int64_t c = 0; c < D; ++c) dt[c] += og[g * D + c] * vg[g * D + c];
        }
    }
}

// The gradient of SimplifiedLinearAttentionQKV: qkv (B, H, W, 3, G, D), p (1, H, W, G, D), weight (D, 1, k, k),
// bias (D,), its output (unused) and d_out (B, H, W, G, D) -> d_qkv, d_p, d_weight, d_bias. Each thread takes whole
// images; the images' dp, d weight and d bias are added in image order (the same numbers on any thread count).
extern "C" int SimplifiedLinearAttentionQKVGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                                const char **dtypes, void *, void *) {
  if (nparam != 10 || !all_float32(10, dtypes)) return 1;
  if (ndims[0] != 6 || ndims[1] != 5 || ndims[2] != 4 || ndims[3] != 1 || ndims[5] != 5) return 1;
  const int64_t *s = shapes[0];
  const int64_t grid[5] = {s[0], s[1], s[2], s[4], s[5]};
  if (s[3] != 3 || !sla_shapes_ok(grid, shapes, 1) || !same_shape(5, grid, shapes[5])) return 1;
  const int64_t B = s[0], G = s[4], D = s[5], GD = G * D, N = s[1] * s[2], k = shapes[2][3];
  const SlaProblem problem(B, s[1], s[2], G, D, k, 3 * GD);
  const float *qkv = static_cast<const float *>(params[0]), *p = static_cast<const float *>(params[1]);
  const float *weight = static_cast<const float *>(params[2]), *dout = static_cast<const float *>(params[5]);
  float *dqkv = static_cast<float *>(params[6]), *dp = static_cast<float *>(params[7]);
  float *dweight = static_cast<float *>(params[8]), *dbias = static_cast<float *>(params[9]);
  std::vector<float> flipped(k * k * D);  // tap-major weights of the transposed conv: weight[c, k−1−a, k−1−b]
  for (int64_t c = 0; c < D; ++c)
    for (int64_t t = 0; t < k * k; ++t) flipped[t * D + c] = weight[c * k * k + (k * k - 1 - t)];
  const int64_t sums = N * GD + k * k * D + D;  // one image's dp, d taps, d bias
  std::vector<float> partial(B * sums, 0.0f);
  parallel_for(B, B * N * GD * (8.0 * D + 3.0 * k * k), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      float *own = partial.data() + b * sums;
      sla_image_grad(problem, qkv + b * N * 3 * GD, p, flipped.data(), dout + b * N * GD, dqkv + b * N * 3 * GD, own,
                     own + N * GD, own + N * GD + k * k * D);
    }
  });
  for (int64_t b = 1; b < B; ++b)
    for (int64_t i = 0; i < sums; ++i) partial[i] += partial[b * sums + i];
  std::copy(partial.begin(), partial.begin() + N * GD, dp);
  for (int64_t c = 0; c < D; ++c)
    for (int64_t t = 0; t < k * k; ++t) dweight[c * k * k + t] = partial[N * GD + t * D + c];
  std::copy(partial.begin() + N * GD + k * k * D, partial.begin() + sums, dbias);
  return 0;
}

// ----- LayerNorm and exact-GELU gradients (training)
// Column sums over rows (dγ, dβ, the bias gradient) are summed in fixed blocks of kSumRows rows, then the blocks in
// order: the same numbers on any thread count. The normalisations are memory-bound: their `work` counts a fraction
// of a multiply-add per value, so a DeiT-T batch of 8 stays on one thread (a thread costs more than it saves there).
constexpr int64_t kSumRows = 64;

// dGELU(v)/dv = (1 + erf(v/√2))/2 + v·e^(−v²/2)/√(2π), 8 values (erf as in the forward pass).
static inline v8f gelu_slope(v8f v) {
  const v8f lo = {-4, -4, -4, -4, -4, -4, -4, -4}, hi = -lo;
  const float sqrt_half = 0.70710678118654752f, inv_sqrt_2pi = 0.39894228040143268f;
  return 0.5f * (1.0f + erf_rational(v * sqrt_half, lo, hi)) + v * inv_sqrt_2pi * exp8(-0.5f * v * v);
}

static inline float gelu_slope(float v) {
  const float erf = erf_rational(v * 0.70710678118654752f, -4.0f, 4.0f);
  return 0.5f * (1.0f + erf) + v * 0.39894228040143268f * __builtin_expf(-0.5f * v * v);
}

// dx = dy · GELU'(x + bias) for len values (bias: len values, or none).
static void gelu_backward_span(const float *__restrict x, const float *__restrict bias, const float *__restrict dy,
                               float *__restrict dx, int64_t len) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const v8f v = bias ? load8(x + i) + load8(bias + i) : load8(x + i);
    store8(dx + i, load8(dy + i) * gelu_slope(v));
  }
  for (; i < len; ++i) dx[i] = dy[i] * gelu_slope(bias ? x[i] + bias[i] : x[i]);
}

// acc[0..len) += row[0..len)
static inline void add_row(float *__restrict acc, const float *__restrict row, int64_t len) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) store8(acc + i, load8(acc + i) + load8(row + i));
  for (; i < len; ++i) acc[i] += row[i];
}

// Sums the per-block partial column sums partial (blocks, len) into out (len), blocks in order.
static void add_blocks(const float *partial, int64_t blocks, int64_t len, float *out) {
  std::fill(out, out + len, 0.0f);
  for (int64_t b = 0; b < blocks; ++b) add_row(out, partial + b * len, len);
}

// Gradient of exact_gelu: (x, dy) -> dx = dy·GELU'(x); with a bias, (x, bias, dy) -> (dx = dy·GELU'(x + bias),
// dbias = Σ over rows of dx), bias along x's last axis.
static int exact_gelu_backward(bool with_bias, int nparam, void **params, int *ndims, int64_t **shapes,
                               const char **dtypes) {
  if (nparam != (with_bias ? 5 : 3) || !all_float32(nparam, dtypes)) return 1;
  int64_t n = element_count(ndims, shapes, 0);
  const float *x = static_cast<const float *>(params[0]);
  if (!with_bias) {
    const float *dy = static_cast<const float *>(params[1]);
    float *dx = static_cast<float *>(params[2]);
    const int64_t blocks = (n + 1023) / 1024;
    parallel_for(blocks, 24.0 * n, [&](int64_t first, int64_t last) {
      const int64_t begin = first * 1024;
      gelu_backward_span(x + begin, nullptr, dy + begin, dx + begin, std::min<int64_t>(n, last * 1024) - begin);
    });
    return 0;
  }
  int64_t width;
  if (!channel_shapes(ndims, shapes, 1, width, n)) return 1;
  const float *bias = static_cast<const float *>(params[1]), *dy = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]), *dbias = static_cast<float *>(params[4]);
  const int64_t rows = n / width, blocks = (rows + kSumRows - 1) / kSumRows;
  std::vector<float> partial(std::max<int64_t>(blocks, 1) * width, 0.0f);
  parallel_for(blocks, 24.0 * n, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      float *sum = partial.data() + blk * width;
      for (int64_t row = blk * kSumRows; row < std::min(rows, (blk + 1) * kSumRows); ++row) {
        gelu_backward_span(x + row * width, bias, dy + row * width, dx + row * width, width);
        add_row(sum, dx + row * width, width);
      }
    }
  });
  add_blocks(partial.data(), blocks, width, dbias);
  return 0;
}

// The aot entry point NAME running IMPL(WITH_BIAS, ...). A kernel with and without a bias takes one name per form:
// MindSpore keeps one bprop per Custom function name, so a graph holding both forms (a GELU cell and an MLP; the
// MLP's fc1 matmul and fc2) needs two.
#define AOT_ENTRY(NAME, IMPL, WITH_BIAS)                                                                        \
  extern "C" int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) { \
    return IMPL(WITH_BIAS, nparam, params, ndims, shapes, dtypes);                                                  \
  }

AOT_ENTRY(ExactGelu, exact_gelu, false)
AOT_ENTRY(ExactGeluOfSum, exact_gelu, true)
AOT_ENTRY(ExactGeluBackward, exact_gelu_backward, false)
AOT_ENTRY(ExactGeluOfSumBackward, exact_gelu_backward, true)

// Σ of len values in 8 vector lanes, then the lanes and the tail in order.
static inline float row_sum(const float *x, int64_t len) {
  v8f acc = {};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) acc += load8(x + i);
  float s = 0.0f;
  for (int u = 0; u < 8; ++u) s += acc[u];
  for (; i < len; ++i) s += x[i];
  return s;
}

// LayerNorm over the last axis of x (rows, C): y = (x − μ)·ρ·γ + β with ρ = 1/√(var + ε) (biased variance, two
// passes); stats (rows, 2) keeps μ and ρ for the backward pass.
extern "C" int LayerNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                         void *) {
  if (nparam != 6 || !all_float32(6, dtypes)) return 1;
  int64_t C, n;
  if (!channel_shapes(ndims, shapes, 2, C, n)) return 1;
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]), eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]), *stats = static_cast<float *>(params[5]);
  parallel_for(n / C, 0.5 * n, [&](int64_t first, int64_t last) {
    std::vector<float> centered(C);
    for (int64_t row = first; row < last; ++row) {
      const float *xr = x + row * C;
      float *yr = y + row * C;
      const float mean = row_sum(xr, C) / C;
      for (int64_t c = 0; c < C; ++c) centered[c] = (xr[c] - mean) * (xr[c] - mean);
      const float rstd = 1.0f / __builtin_sqrtf(row_sum(centered.data(), C) / C + eps);
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) store8(yr + c, (load8(xr + c) - mean) * rstd * load8(gamma + c) + load8(beta + c));
      for (; c < C; ++c) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
      stats[2 * row] = mean;
      stats[2 * row + 1] = rstd;
    }
  });
  return 0;
}

// Gradient of LayerNorm: (x, γ, stats, dy) -> (dx, dγ, dβ) with x̂ = (x − μ)·ρ, g = dy·γ:
//   dx = ρ·(g − mean(g) − x̂·mean(g·x̂)) per row, dγ = Σ_rows dy·x̂, dβ = Σ_rows dy.
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                                 void *) {
  if (nparam != 7 || !all_float32(7, dtypes)) return 1;
  int64_t C, n;
  if (!channel_shapes(ndims, shapes, 1, C, n)) return 1;
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]);
  const float *stats = static_cast<const float *>(params[2]), *dy = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]), *dgamma = static_cast<float *>(params[5]);
  float *dbeta = static_cast<float *>(params[6]);
  const int64_t rows = n / C, blocks = (rows + kSumRows - 1) / kSumRows;
  std::vector<float> partial(std::max<int64_t>(blocks, 1) * 2 * C, 0.0f);  // per block: Σ dy·x̂, then Σ dy
  parallel_for(blocks, 2.0 * n, [&](int64_t first, int64_t last) {
    std::vector<float> xhat(C), g(C), gx(C);
    for (int64_t blk = first; blk < last; ++blk) {
      float *sum_dyx = partial.data() + blk * 2 * C, *sum_dy = sum_dyx + C;
      for (int64_t row = blk * kSumRows; row < std::min(rows, (blk + 1) * kSumRows); ++row) {
        const float *xr = x + row * C, *dyr = dy + row * C;
        const float mean = stats[2 * row], rstd = stats[2 * row + 1];
        for (int64_t c = 0; c < C; ++c) {
          xhat[c] = (xr[c] - mean) * rstd;
          g[c] = dyr[c] * gamma[c];
          gx[c] = g[c] * xhat[c];
          sum_dyx[c] += dyr[c] * xhat[c];
        }
        add_row(sum_dy, dyr, C);
        const float mean_g = row_sum(g.data(), C) / C, mean_gx = row_sum(gx.data(), C) / C;
        float *dxr = dx + row * C;
        for (int64_t c = 0; c < C; ++c) dxr[c] = rstd * (g[c] - mean_g - xhat[c] * mean_gx);
      }
    }
  });
  std::vector<float> total(2 * C);
  add_blocks(partial.data(), blocks, 2 * C, total.data());
  std::copy(total.begin(), total.begin() + C, dgamma);
  std::copy(total.begin() + C, total.end(), dbeta);
  return 0;
}

// ----- RepBN / BatchNorm over tokens (training)
// Per-channel Σ over the rows of x (rows, C) of f(row, c) into out (C): fixed blocks of kSumRows rows, then the blocks
// in order (the same numbers on any thread count). f(xr, c, acc) adds row xr's terms to acc[c] for every c.
template <class F>
static void column_sums(int64_t rows, int64_t C, double work, F f, float *out) {
  const int64_t blocks = (rows + kSumRows - 1) / kSumRows;
  std::vector<float> partial(std::max<int64_t>(blocks, 1) * C, 0.0f);
  parallel_for(blocks, work, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk)
      for (int64_t row = blk * kSumRows; row < std::min(rows, (blk + 1) * kSumRows); ++row)
        f(row, partial.data() + blk * C);
  });
  add_blocks(partial.data(), blocks, C, out);
}

// RepBN in training over the last axis of x (rows, C), batch statistics over all rows:
//   y = (x − μ)·ρ·γ + β + α·x,  ρ = 1/√(var + ε) (biased variance, two passes);
// stats (3, C): μ, ρ and the unbiased variance (for the running statistics). α = 0 is plain BatchNorm.
extern "C" int RepBatchNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                            void *) {
  if (nparam != 7 || !all_float32(7, dtypes)) return 1;
  int64_t C, n;
  if (!channel_shapes(ndims, shapes, 2, C, n)) return 1;
  const int64_t rows = n / C;
  if (rows < 2) return 1;  // the unbiased variance needs two samples
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]), alpha = *static_cast<const float *>(params[3]);
  const float eps = *static_cast<const float *>(params[4]);
  float *y = static_cast<float *>(params[5]), *stats = static_cast<float *>(params[6]);
  float *mean = stats, *rstd = stats + C, *unbiased = stats + 2 * C;
  column_sums(rows, C, 0.5 * n, [&](int64_t row, float *acc) { add_row(acc, x + row * C, C); }, mean);
  for (int64_t c = 0; c < C; ++c) mean[c] /= rows;
  column_sums(rows, C, 0.5 * n, [&](int64_t row, float *acc) {
    const float *xr = x + row * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += (xr[c] - mean[c]) * (xr[c] - mean[c]);
  }, unbiased);
  std::vector<float> scale(C), shift(C);  // y = x·scale + shift
  for (int64_t c = 0; c < C; ++c) {
    rstd[c] = 1.0f / __builtin_sqrtf(unbiased[c] / rows + eps);
    scale[c] = rstd[c] * gamma[c] + alpha;
    shift[c] = beta[c] - mean[c] * rstd[c] * gamma[c];
    unbiased[c] /= rows - 1;
  }
  parallel_for(rows, 0.5 * n, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const float *xr = x + row * C;
      float *yr = y + row * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * scale[c] + shift[c];
    }
  });
  return 0;
}

// Gradient of RepBatchNorm: (x, γ, α, stats, dy) -> (dx, dγ, dβ, dα) with x̂ = (x − μ)·ρ over M rows:
//   dβ = Σ dy, dγ = Σ dy·x̂ (per channel), dα = Σ dy·x (all values),
//   dx = α·dy + γ·ρ·(dy − dβ/M − x̂·dγ/M).
extern "C" int RepBatchNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  if (nparam != 9 || !all_float32(9, dtypes)) return 1;
  int64_t C, n;
  if (!channel_shapes(ndims, shapes, 1, C, n)) return 1;
  const int64_t rows = n / C;
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]);
  const float alpha = *static_cast<const float *>(params[2]);
  const float *stats = static_cast<const float *>(params[3]), *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]), *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]), *dalpha = static_cast<float *>(params[8]);
  const float *mean = stats, *rstd = stats + C;
  std::vector<float> sums(3 * C);  // per channel: Σ dy, Σ dy·x̂, Σ dy·x
  column_sums(rows, 3 * C, 2.0 * n, [&](int64_t row, float *acc) {
    const float *xr = x + row * C, *dyr = dy + row * C;
    for (int64_t c = 0; c < C; ++c) {
      acc[c] += dyr[c];
      acc[C + c] += dyr[c] * (xr[c] - mean[c]) * rstd[c];
      acc[2 * C + c] += dyr[c] * xr[c];
    }
  }, sums.data());
  std::vector<float> k(C), kx(C), k0(C);  // dx = α·dy + k·dy − kx·x − k0, per channel
  float total = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    dbeta[c] = sums[c];
    dgamma[c] = sums[C + c];
    total += sums[2 * C + c];
    k[c] = alpha + gamma[c] * rstd[c];
    kx[c] = gamma[c] * rstd[c] * rstd[c] * dgamma[c] / rows;
    k0[c] = gamma[c] * rstd[c] * (dbeta[c] / rows - mean[c] * rstd[c] * dgamma[c] / rows);
  }
  *dalpha = total;
  parallel_for(rows, 0.5 * n, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const float *xr = x + row * C, *dyr = dy + row * C;
      float *dxr = dx + row * C;
      for (int64_t c = 0; c < C; ++c) dxr[c] = k[c] * dyr[c] - kx[c] * xr[c] - k0[c];
    }
  });
  return 0;
}

// ----- Dense layers, y = x·Wᵀ + b, forward and backward, through oneDNN's row-major sgemm (dnnl_sgemm) from the
// libdnnl that MindSpore's CPU backend itself loads (its path given at compile time as SLAB_MS_DNNL; without it
// the kernels return an error and the cells keep MindSpore's MatMul). Each product is split by rows or columns of
// its output over the threads, every thread one sgemm on its block: each element is the same K-long sum on any
// thread count (tested).
typedef int (*Sgemm)(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

static Sgemm sgemm() {
  static const Sgemm f = []() -> Sgemm {
#ifdef SLAB_MS_DNNL
    void *library = dlopen(SLAB_MS_DNNL, RTLD_NOW | RTLD_LOCAL);
    return library ? reinterpret_cast<Sgemm>(dlsym(library, "dnnl_sgemm")) : nullptr;
#else
    return nullptr;
#endif
  }();
  return f;
}

// C (M, N) = op(A)·op(B) + bias (N, on every row; none: C = op(A)·op(B)), row-major; op(X) is X or Xᵀ as its
// trans is 'N' or 'T'. The threads split C by rows, every thread sharing op(B), or, where op(A) is the smaller
// operand (a Dense layer on one image), by columns; false if an sgemm failed.
static bool parallel_sgemm(char trans_a, char trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                           const float *B, int64_t ldb, const float *bias, float *C, int64_t ldc) {
  std::atomic<bool> ok{true};
  const bool by_rows = M >= N;
  parallel_for(by_rows ? M : N, double(M) * N * K, [&](int64_t first, int64_t last) {
    const int64_t m0 = by_rows ? first : 0, m1 = by_rows ? last : M, n0 = by_rows ? 0 : first, n1 = by_rows ? N : last;
    const float *a = trans_a == 'N' ? A + m0 * lda : A + m0, *b = trans_b == 'N' ? B + n0 : B + n0 * ldb;
    if (bias)
      for (int64_t row = m0; row < m1; ++row) std::copy(bias + n0, bias + n1, C + row * ldc + n0);
    if (sgemm()(trans_a, trans_b, m1 - m0, n1 - n0, K, 1.0f, a, lda, b, ldb, bias ? 1.0f : 0.0f, C + m0 * ldc + n0,
                ldc))
      ok = false;
  });
  return ok;
}

// x (M, K) and w (N, K), with bias (N) when has_bias; false otherwise.
static bool dense_shapes(const int *ndims, int64_t **shapes, bool has_bias, int64_t &M, int64_t &N, int64_t &K) {
  if (ndims[0] != 2 || ndims[1] != 2 || shapes[0][1] != shapes[1][1]) return false;
  M = shapes[0][0], N = shapes[1][0], K = shapes[0][1];
  return !has_bias || (ndims[2] == 1 && shapes[2][0] == N);
}

// (x, w[, bias]) -> y = x·wᵀ (+ bias on every row): x (M, K), w (N, K), y (M, N).
static int dense(bool has_bias, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  int64_t M, N, K;
  if (nparam != (has_bias ? 4 : 3) || !all_float32(nparam, dtypes) || sgemm() == nullptr ||
      !dense_shapes(ndims, shapes, has_bias, M, N, K))
    return 1;
  const float *x = static_cast<const float *>(params[0]), *w = static_cast<const float *>(params[1]);
  const float *bias = has_bias ? static_cast<const float *>(params[2]) : nullptr;
  return parallel_sgemm('N', 'T', M, N, K, x, K, w, K, bias, static_cast<float *>(params[nparam - 1]), N) ? 0 : 1;
}

// Gradient of dense: (x, w[, bias], dy) -> (dx = dy·w, dw = dyᵀ·x[, dbias = Σ over rows of dy]).
static int dense_backward(bool has_bias, int nparam, void **params, int *ndims, int64_t **shapes,
                          const char **dtypes) {
  int64_t M, N, K;
  if (nparam != (has_bias ? 7 : 5) || !all_float32(nparam, dtypes) || sgemm() == nullptr ||
      !dense_shapes(ndims, shapes, has_bias, M, N, K))
    return 1;
  const int dy_at = has_bias ? 3 : 2;
  if (ndims[dy_at] != 2 || shapes[dy_at][0] != M || shapes[dy_at][1] != N) return 1;
  const float *x = static_cast<const float *>(params[0]), *w = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[dy_at]);
  float *dx = static_cast<float *>(params[dy_at + 1]), *dw = static_cast<float *>(params[dy_at + 2]);
  if (!parallel_sgemm('N', 'N', M, K, N, dy, N, w, K, nullptr, dx, K) ||
      !parallel_sgemm('T', 'N', N, K, M, dy, N, x, K, nullptr, dw, K))
    return 1;
  if (has_bias)
    column_sums(M, N, 0.5 * M * N, [&](int64_t row, float *acc) { add_row(acc, dy + row * N, N); },
                static_cast<float *>(params[6]));
  return 0;
}

AOT_ENTRY(Dense, dense, true)
AOT_ENTRY(DenseBackward, dense_backward, true)
AOT_ENTRY(DenseNoBias, dense, false)
AOT_ENTRY(DenseNoBiasBackward, dense_backward, false)
