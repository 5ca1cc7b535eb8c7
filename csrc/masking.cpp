// Multi-block / random-tube mask sampling and collation into index tensors.
//
// This is the fast path of salt_fast/masking.py; the Python file holds the readable
// reference and the documentation of the algorithm. Both must produce bit-identical
// output for the same (config, grid, batch size, seed, step, config index), so every
// constant and every draw order below mirrors the reference exactly.
//
// Only one translation unit: it also owns the PYBIND11_MODULE of salt_fast._C.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace salt_fast {
namespace masking {

// ---------------------------------------------------------------------------
// Counter-based SplitMix64. Draw i of the stream with key k is mix(k + (i + 1) * kGamma),
// which is exactly the output sequence of SplitMix64 seeded with k.
// ---------------------------------------------------------------------------
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kMul1 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t kMul2 = 0x94D049BB133111EBULL;
// Salts that separate the truncation streams from the per-sample sampling streams.
constexpr uint64_t kContextTruncSalt = 0xD1B54A32D192ED03ULL;
constexpr uint64_t kTargetTruncSalt = 0x8CB92BA72F3D8DD7ULL;

struct MaskingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * kMul1;
  z = (z ^ (z >> 27)) * kMul2;
  return z ^ (z >> 31);
}

inline uint64_t batch_key(uint64_t seed, uint64_t step, uint64_t config_index) {
  return mix(mix(mix(seed) ^ step) ^ config_index);
}
inline uint64_t block_size_key(uint64_t bkey) { return mix(bkey ^ 0ULL); }
inline uint64_t sample_key(uint64_t bkey, int64_t b) {
  return mix(bkey ^ static_cast<uint64_t>(b + 1));
}
inline uint64_t trunc_key(uint64_t bkey, int64_t b, uint64_t salt) {
  return mix(bkey ^ static_cast<uint64_t>(b + 1) ^ salt);
}

class Stream {
 public:
  explicit Stream(uint64_t key) : key_(key) {}
  uint64_t next() {
    ++counter_;
    return mix(key_ + counter_ * kGamma);
  }
  // Multiply-shift on the high 32 bits: no modulo, no rejection, n < 2^32.
  int64_t below(int64_t n) {
    return static_cast<int64_t>(((next() >> 32) * static_cast<uint64_t>(n)) >> 32);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

// Python ints of any size/sign -> uint64 modulo 2^64, the same reduction as `x & (2**64-1)`.
inline uint64_t as_u64(const py::int_& x) {
  const unsigned long long v = PyLong_AsUnsignedLongLongMask(x.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw py::error_already_set();
  return static_cast<uint64_t>(v);
}

// ---------------------------------------------------------------------------
// Configs and grid
// ---------------------------------------------------------------------------
struct Grid {
  int64_t T, H, W;
  int64_t hw() const { return H * W; }
  int64_t n() const { return T * H * W; }
  std::string str() const {
    std::ostringstream s;
    s << "(" << T << ", " << H << ", " << W << ")";
    return s.str();
  }
};

struct Config {
  bool tube = false;
  int64_t num_blocks = 0;
  double spatial_scale = 0, temporal_scale = 0, ar_lo = 0, ar_hi = 0;
  double ratio = 0;
  std::string str() const {
    std::ostringstream s;
    s.precision(17);
    if (tube) {
      s << "RandomTube(ratio=" << ratio << ")";
    } else {
      s << "MultiBlock(num_blocks=" << num_blocks << ", spatial_scale=" << spatial_scale
        << ", temporal_scale=" << temporal_scale << ", aspect_ratio=(" << ar_lo << ", " << ar_hi
        << "))";
    }
    return s.str();
  }
};

Grid parse_grid(const std::vector<int64_t>& g) {
  if (g.size() != 3) throw std::invalid_argument("grid must be (T, H, W)");
  Grid grid{g[0], g[1], g[2]};
  if (grid.T < 1 || grid.H < 1 || grid.W < 1)
    throw std::invalid_argument("grid dims must be >= 1, got " + grid.str());
  // Draw bounds must stay below 2^32 for the multiply-shift.
  if (grid.n() >= (int64_t{1} << 31)) throw std::invalid_argument("grid too large: " + grid.str());
  return grid;
}

// Duck-typed on the Python dataclasses (MultiBlock / RandomTube); they validate their
// fields at construction, the checks here only guard against foreign objects.
Config parse_config(py::handle cfg) {
  Config c;
  if (py::hasattr(cfg, "num_blocks")) {
    c.num_blocks = cfg.attr("num_blocks").cast<int64_t>();
    c.spatial_scale = cfg.attr("spatial_scale").cast<double>();
    c.temporal_scale = cfg.attr("temporal_scale").cast<double>();
    auto ar = cfg.attr("aspect_ratio").cast<std::vector<double>>();
    if (ar.size() != 2) throw std::invalid_argument("aspect_ratio must be (lo, hi)");
    c.ar_lo = ar[0];
    c.ar_hi = ar[1];
    if (c.num_blocks < 1) throw std::invalid_argument("num_blocks must be >= 1");
    if (!(c.spatial_scale > 0 && c.spatial_scale <= 1))
      throw std::invalid_argument("spatial_scale must be in (0, 1]");
    if (!(c.temporal_scale > 0 && c.temporal_scale <= 1))
      throw std::invalid_argument("temporal_scale must be in (0, 1]");
    if (!(c.ar_lo > 0 && c.ar_lo <= c.ar_hi))
      throw std::invalid_argument("aspect_ratio must satisfy 0 < lo <= hi");
  } else if (py::hasattr(cfg, "ratio")) {
    c.tube = true;
    c.ratio = cfg.attr("ratio").cast<double>();
    if (!(c.ratio > 0 && c.ratio < 1)) throw std::invalid_argument("ratio must be in (0, 1)");
  } else {
    throw std::invalid_argument("config must be a MultiBlock or RandomTube");
  }
  return c;
}

enum class Truncation { kMin, kRandom, kPad };

Truncation parse_truncation(const std::string& s) {
  if (s == "min") return Truncation::kMin;
  if (s == "random") return Truncation::kRandom;
  if (s == "pad") return Truncation::kPad;
  throw std::invalid_argument("truncation must be 'min', 'random' or 'pad', got '" + s + "'");
}

// ---------------------------------------------------------------------------
// Bitset layout: each sample is T planes of P = ceil(H*W / 64) words, bit i of a plane is
// spatial position i (= h*W + w). Planes are word-aligned so a block is one spatial
// rectangle OR-ed into a run of planes, and a row's ids come out of ctz loops.
// ---------------------------------------------------------------------------
struct Layout {
  Grid g;
  int64_t P;                   // words per plane
  std::vector<uint64_t> live;  // per plane word: the bits that are real positions
  explicit Layout(const Grid& grid) : g(grid), P((grid.hw() + 63) / 64), live(static_cast<size_t>(P), ~0ULL) {
    const int64_t tail = g.hw() & 63;
    if (tail) live[P - 1] = (1ULL << tail) - 1;
  }
  int64_t words() const { return g.T * P; }  // per sample
};

// Sets bits [lo, hi) of a word array, hi > lo.
inline void set_range(uint64_t* w, int64_t lo, int64_t hi) {
  const int64_t a = lo >> 6, b = (hi - 1) >> 6;
  const uint64_t first = ~0ULL << (lo & 63);
  const uint64_t last = ~0ULL >> (63 - ((hi - 1) & 63));
  if (a == b) {
    w[a] |= first & last;
    return;
  }
  w[a] |= first;
  for (int64_t i = a + 1; i < b; ++i) w[i] = ~0ULL;
  w[b] |= last;
}

// True when some real position of the sample is not masked, i.e. the context is non-empty.
inline bool has_context(const uint64_t* bits, const Layout& L) {
  for (int64_t tt = 0; tt < L.g.T; ++tt)
    for (int64_t p = 0; p < L.P; ++p)
      if (~bits[tt * L.P + p] & L.live[p]) return true;
  return false;
}

// ---------------------------------------------------------------------------
// Sampling into B bitsets (1 = target / masked)
// ---------------------------------------------------------------------------
struct BlockShape {
  int64_t t, h, w;
};

BlockShape block_shape(const Config& c, const Grid& g, uint64_t bkey) {
  Stream s(block_size_key(bkey));
  const double u = s.uniform();
  // volatile: keeps the compiler from fusing this into an FMA, which would round once
  // instead of twice and could flip a later round() against the Python reference.
  volatile double span = u * (c.ar_hi - c.ar_lo);
  const double a = c.ar_lo + span;
  const int64_t t = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(g.T) * c.temporal_scale));
  const int64_t keep = static_cast<int64_t>(static_cast<double>(g.hw()) * c.spatial_scale);
  // nearbyint under the default rounding mode is round-half-to-even, like Python's round().
  int64_t h = static_cast<int64_t>(std::nearbyint(std::sqrt(static_cast<double>(keep) * a)));
  int64_t w = static_cast<int64_t>(std::nearbyint(std::sqrt(static_cast<double>(keep) / a)));
  h = std::min<int64_t>(std::max<int64_t>(h, 1), g.H);
  w = std::min<int64_t>(std::max<int64_t>(w, 1), g.W);
  return {std::min<int64_t>(t, g.T), h, w};
}

void sample_multiblock(const Config& c, const Layout& L, int64_t B, uint64_t bkey, int64_t max_attempts,
                       uint64_t* out) {
  const Grid& g = L.g;
  const BlockShape bs = block_shape(c, g, bkey);
  const int64_t P = L.P, words = L.words();
  const int64_t nT = g.T - bs.t + 1, nH = g.H - bs.h + 1, nW = g.W - bs.w + 1;
  std::vector<uint64_t> rect(static_cast<size_t>(P));
  for (int64_t b = 0; b < B; ++b) {
    Stream s(sample_key(bkey, b));
    uint64_t* m = out + b * words;
    bool ok = false;
    for (int64_t attempt = 0; attempt < max_attempts && !ok; ++attempt) {
      std::fill(m, m + words, 0ULL);
      for (int64_t k = 0; k < c.num_blocks; ++k) {
        const int64_t start = s.below(nT);
        const int64_t top = s.below(nH);
        const int64_t left = s.below(nW);
        std::fill(rect.begin(), rect.end(), 0ULL);
        for (int64_t hh = top; hh < top + bs.h; ++hh) set_range(rect.data(), hh * g.W + left, hh * g.W + left + bs.w);
        for (int64_t tt = start; tt < start + bs.t; ++tt)
          for (int64_t p = 0; p < P; ++p) m[tt * P + p] |= rect[p];
      }
      ok = has_context(m, L);
    }
    if (!ok) {
      std::ostringstream msg;
      msg << "could not sample a non-empty context for " << c.str() << " on grid (T, H, W) = "
          << g.str() << " in " << max_attempts << " attempts (sample " << b
          << "): blocks of t x h x w = " << bs.t << " x " << bs.h << " x " << bs.w
          << " cover the whole grid; lower num_blocks, spatial_scale or temporal_scale";
      throw MaskingError(msg.str());
    }
  }
}

int64_t tube_masked_count(const Config& c, const Grid& g) {
  const int64_t HW = g.hw();
  const int64_t k = static_cast<int64_t>(c.ratio * static_cast<double>(HW));
  if (k < 1 || k >= HW) {
    std::ostringstream msg;
    msg << c.str() << " masks " << k << " of " << HW << " spatial positions on grid (T, H, W) = "
        << g.str() << "; it must mask at least one and leave at least one visible";
    throw MaskingError(msg.str());
  }
  return k;
}

void sample_tube(const Config& c, const Layout& L, int64_t B, uint64_t bkey, uint64_t* out) {
  const int64_t HW = L.g.hw(), P = L.P, words = L.words();
  const int64_t k = tube_masked_count(c, L.g);
  std::vector<int32_t> perm(static_cast<size_t>(HW));
  for (int64_t b = 0; b < B; ++b) {
    Stream s(sample_key(bkey, b));
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = 0; i < k; ++i) std::swap(perm[i], perm[i + s.below(HW - i)]);
    uint64_t* m = out + b * words;
    std::fill(m, m + P, 0ULL);
    for (int64_t i = 0; i < k; ++i) m[perm[i] >> 6] |= 1ULL << (perm[i] & 63);
    for (int64_t tt = 1; tt < L.g.T; ++tt) std::copy(m, m + P, m + tt * P);  // a tube: same plane everywhere
  }
}

void sample_into(const Config& c, const Layout& L, int64_t B, uint64_t bkey, int64_t max_attempts,
                 uint64_t* out) {
  if (c.tube) {
    sample_tube(c, L, B, bkey, out);
  } else {
    sample_multiblock(c, L, B, bkey, max_attempts, out);
  }
}

// bool [B, N] <-> bitsets, for the two lower-level entry points only.
void unpack(const uint64_t* bits, const Layout& L, int64_t B, uint8_t* out) {
  const int64_t HW = L.g.hw();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t tt = 0; tt < L.g.T; ++tt) {
      const uint64_t* plane = bits + (b * L.g.T + tt) * L.P;
      uint8_t* dst = out + (b * L.g.T + tt) * HW;
      for (int64_t i = 0; i < HW; ++i) dst[i] = static_cast<uint8_t>((plane[i >> 6] >> (i & 63)) & 1ULL);
    }
}

void pack(const uint8_t* mask, const Layout& L, int64_t B, uint64_t* bits) {
  const int64_t HW = L.g.hw();
  std::fill(bits, bits + B * L.words(), 0ULL);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t tt = 0; tt < L.g.T; ++tt) {
      uint64_t* plane = bits + (b * L.g.T + tt) * L.P;
      const uint8_t* src = mask + (b * L.g.T + tt) * HW;
      for (int64_t i = 0; i < HW; ++i) plane[i >> 6] |= static_cast<uint64_t>(src[i] != 0) << (i & 63);
    }
}

// ---------------------------------------------------------------------------
// Collation into [B, K] int64 id tensors
// ---------------------------------------------------------------------------
using OptTensor = std::optional<at::Tensor>;
using Collated = std::tuple<at::Tensor, at::Tensor, OptTensor, OptTensor>;

// Per-byte popcounts of x, one count per byte (SWAR). Portable and, on the baseline x86-64
// target (no popcnt instruction), cheaper than the libgcc call __builtin_popcountll becomes.
inline uint64_t byte_counts(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  return (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
}
constexpr uint64_t kBytesOnes = 0x0101010101010101ULL;
inline int popcount64(uint64_t x) { return static_cast<int>((byte_counts(x) * kBytesOnes) >> 56); }

// For every byte value: the positions of its set bits, ascending, padded with junk. int64
// entries (16 KiB) so that emitting a byte is a plain add of 8 int64s.
struct ByteTable {
  int64_t pos[256][8];
};
constexpr ByteTable make_byte_table() {
  ByteTable t{};
  for (int v = 0; v < 256; ++v) {
    int n = 0;
    for (int i = 0; i < 8; ++i)
      if (v & (1 << i)) t.pos[v][n++] = i;
  }
  return t;
}
constexpr ByteTable kByteTable = make_byte_table();
typedef int64_t I64x2 __attribute__((vector_size(16)));  // GCC/Clang vector extension

// Appends base + (index of each set bit of x), ascending, to out[n..] without exceeding cap;
// returns the new n. Dense words go through the byte table, which always stores 8 values
// per byte and so writes up to out[n + 63]: only allowed when n + 64 <= cap. Each byte's
// output offset comes from a prefix sum of the byte counts (one multiply), so the 8 bytes
// are independent instead of a chain of dependent loads.
inline int64_t emit_word(uint64_t x, int64_t base, int64_t* out, int64_t n, int64_t cap) {
  const uint64_t cum = byte_counts(x) * kBytesOnes;  // byte k = set bits in bytes 0..k
  const int64_t c = static_cast<int64_t>(cum >> 56);
  if (c > 16 && n + 64 <= cap) {
    const uint64_t before = cum << 8;  // byte k = set bits in bytes 0..k-1
    for (int k = 0; k < 8; ++k) {
      const int64_t* pos = kByteTable.pos[(x >> (8 * k)) & 0xFFu];
      int64_t* dst = out + n + static_cast<int64_t>((before >> (8 * k)) & 0xFFu);
      const int64_t b = base + 8 * k;
      const I64x2 bb = {b, b};
      for (int j = 0; j < 8; j += 2) {  // 2-lane vectors: SSE2 / NEON baseline, no dispatch
        I64x2 v;
        std::memcpy(&v, pos + j, sizeof v);
        v += bb;
        std::memcpy(dst + j, &v, sizeof v);
      }
    }
    return n + c;
  }
  const int64_t end = std::min<int64_t>(cap, n + c);
  while (n < end) {
    out[n++] = base + __builtin_ctzll(x);
    x &= x - 1;
  }
  return n;
}

// Writes the ascending ids of one sample's target (Target) or context bits to out, at most
// cap of them (the earliest), and returns how many were written.
template <bool Target>
int64_t emit_ids(const uint64_t* bits, const Layout& L, int64_t* out, int64_t cap) {
  const int64_t HW = L.g.hw();
  int64_t n = 0;
  for (int64_t tt = 0; tt < L.g.T && n < cap; ++tt)
    for (int64_t p = 0; p < L.P; ++p) {
      const uint64_t w = bits[tt * L.P + p];
      n = emit_word(Target ? w : (~w & L.live[p]), tt * HW + p * 64, out, n, cap);
    }
  return n;
}

template <bool Target>
int64_t count_ids(const uint64_t* bits, const Layout& L) {
  int64_t n = 0;
  for (int64_t tt = 0; tt < L.g.T; ++tt)
    for (int64_t p = 0; p < L.P; ++p) {
      const uint64_t x = bits[tt * L.P + p];
      n += popcount64(Target ? x : (~x & L.live[p]));
    }
  return n;
}

// One row of the output from a sample's bits: K ids under the truncation policy.
template <bool Target>
void write_row(const uint64_t* bits, const Layout& L, int64_t K, Truncation tr, uint64_t key,
               std::vector<int64_t>& scratch, int64_t* dst, bool* valid) {
  switch (tr) {
    case Truncation::kMin:
      emit_ids<Target>(bits, L, dst, K);  // the prefix of the sorted row: drops the latest ids
      break;
    case Truncation::kRandom: {
      int64_t* buf = scratch.data();
      const int64_t n = emit_ids<Target>(bits, L, buf, L.g.n());
      if (n > K) {
        Stream s(key);
        for (int64_t i = 0; i < K; ++i) std::swap(buf[i], buf[i + s.below(n - i)]);
        std::sort(buf, buf + K);
      }
      std::memcpy(dst, buf, static_cast<size_t>(K) * sizeof(int64_t));
      break;
    }
    case Truncation::kPad: {
      // Padding slots take the smallest ids of the *other* set, so every row stays free of
      // duplicates (gather's backward is a plain scatter) and a slot never aliases a real token.
      // There are always enough: K - n <= N - n, the size of the other set.
      const int64_t n = emit_ids<Target>(bits, L, dst, K);
      emit_ids<!Target>(bits, L, dst + n, K - n);
      std::fill(valid, valid + n, true);
      std::fill(valid + n, valid + K, false);
      break;
    }
  }
}

Collated collate(const uint64_t* bits, const Layout& L, int64_t B, Truncation tr, uint64_t bkey) {
  const int64_t N = L.g.n(), words = L.words();
  int64_t t_min = N, t_max = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = count_ids<true>(bits + b * words, L);
    t_min = std::min(t_min, n);
    t_max = std::max(t_max, n);
  }
  const bool pad = tr == Truncation::kPad;
  // Context lengths are N - target lengths, so the min/max swap roles.
  const int64_t Kc = pad ? N - t_min : N - t_max;
  const int64_t Kt = pad ? t_max : t_min;

  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  at::Tensor ctx = torch::empty({B, Kc}, i64);
  at::Tensor tgt = torch::empty({B, Kt}, i64);
  OptTensor ctx_valid, tgt_valid;
  if (pad) {
    const auto b8 = torch::TensorOptions().dtype(torch::kBool);
    ctx_valid = torch::empty({B, Kc}, b8);
    tgt_valid = torch::empty({B, Kt}, b8);
  }
  int64_t* ctx_p = ctx.data_ptr<int64_t>();
  int64_t* tgt_p = tgt.data_ptr<int64_t>();
  bool* cv_p = pad ? ctx_valid->data_ptr<bool>() : nullptr;
  bool* tv_p = pad ? tgt_valid->data_ptr<bool>() : nullptr;

  std::vector<int64_t> scratch(tr == Truncation::kRandom ? static_cast<size_t>(N) : 0);
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t* m = bits + b * words;
    write_row<false>(m, L, Kc, tr, trunc_key(bkey, b, kContextTruncSalt), scratch, ctx_p + b * Kc,
                     pad ? cv_p + b * Kc : nullptr);
    write_row<true>(m, L, Kt, tr, trunc_key(bkey, b, kTargetTruncSalt), scratch, tgt_p + b * Kt,
                    pad ? tv_p + b * Kt : nullptr);
  }
  return Collated{ctx, tgt, ctx_valid, tgt_valid};
}

void check_batch(int64_t batch_size, int64_t max_attempts) {
  if (batch_size < 1) throw std::invalid_argument("batch_size must be >= 1");
  if (max_attempts < 1) throw std::invalid_argument("max_attempts must be >= 1");
}

// ---------------------------------------------------------------------------
// Python entry points (signatures identical to the *_py reference functions)
// ---------------------------------------------------------------------------
at::Tensor sample_target_mask(py::handle config, const std::vector<int64_t>& grid, int64_t batch_size,
                              const py::int_& seed, const py::int_& step, const py::int_& config_index,
                              int64_t max_attempts) {
  const Config c = parse_config(config);
  const Layout L(parse_grid(grid));
  check_batch(batch_size, max_attempts);
  const uint64_t bkey = batch_key(as_u64(seed), as_u64(step), as_u64(config_index));
  py::gil_scoped_release nogil;
  std::vector<uint64_t> bits(static_cast<size_t>(batch_size * L.words()));
  sample_into(c, L, batch_size, bkey, max_attempts, bits.data());
  at::Tensor out = torch::empty({batch_size, L.g.n()}, torch::TensorOptions().dtype(torch::kBool));
  unpack(bits.data(), L, batch_size, reinterpret_cast<uint8_t*>(out.data_ptr<bool>()));
  return out;
}

Collated collate_ids(const at::Tensor& target_mask, const std::string& truncation, const py::int_& seed,
                     const py::int_& step, const py::int_& config_index) {
  TORCH_CHECK_VALUE(target_mask.dim() == 2, "target_mask must be [B, N], got ", target_mask.dim(), " dims");
  TORCH_CHECK_VALUE(target_mask.scalar_type() == at::kBool, "target_mask must be bool, got ",
                    target_mask.scalar_type());
  TORCH_CHECK_VALUE(target_mask.device().is_cpu(), "target_mask must be a CPU tensor");
  TORCH_CHECK_VALUE(target_mask.size(0) >= 1 && target_mask.size(1) >= 1, "target_mask must be non-empty");
  const Truncation tr = parse_truncation(truncation);
  const uint64_t bkey = batch_key(as_u64(seed), as_u64(step), as_u64(config_index));
  const at::Tensor m = target_mask.contiguous();
  const int64_t B = m.size(0);
  // Ids are flat positions, so any [B, N] mask is collated as a (1, 1, N) grid.
  const Layout L(parse_grid({1, 1, m.size(1)}));
  py::gil_scoped_release nogil;
  std::vector<uint64_t> bits(static_cast<size_t>(B * L.words()));
  pack(reinterpret_cast<const uint8_t*>(m.data_ptr<bool>()), L, B, bits.data());
  return collate(bits.data(), L, B, tr, bkey);
}

Collated sample_mask_batch(py::handle config, const std::vector<int64_t>& grid, int64_t batch_size,
                           const py::int_& seed, const py::int_& step, const py::int_& config_index,
                           int64_t max_attempts, const std::string& truncation) {
  const Config c = parse_config(config);
  const Layout L(parse_grid(grid));
  check_batch(batch_size, max_attempts);
  const Truncation tr = parse_truncation(truncation);
  const uint64_t bkey = batch_key(as_u64(seed), as_u64(step), as_u64(config_index));
  py::gil_scoped_release nogil;
  std::vector<uint64_t> bits(static_cast<size_t>(batch_size * L.words()));  // the mask never leaves C++
  sample_into(c, L, batch_size, bkey, max_attempts, bits.data());
  return collate(bits.data(), L, batch_size, tr, bkey);
}

at::Tensor splitmix64_draws(const py::int_& key, int64_t start, int64_t n) {
  TORCH_CHECK_VALUE(start >= 0 && n >= 0, "start and n must be >= 0");
  Stream s(as_u64(key));
  at::Tensor out = torch::empty({n}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < start; ++i) s.next();
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int64_t>(s.next());  // bit pattern of the uint64
  return out;
}

}  // namespace masking
}  // namespace salt_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace mk = salt_fast::masking;
  m.doc() = "salt_fast C++ extension: multi-block / random-tube mask sampling and collation";

  py::register_exception<mk::MaskingError>(m, "MaskingError", PyExc_RuntimeError);

  m.def("sample_target_mask", &mk::sample_target_mask, py::arg("config"), py::arg("grid"),
        py::arg("batch_size"), py::arg("seed"), py::arg("step"), py::arg("config_index"),
        py::arg("max_attempts") = 100,
        "Bool target mask [B, T*H*W] (True = masked/predicted). Same as masking.sample_target_mask_py.");
  m.def("collate_ids", &mk::collate_ids, py::arg("target_mask"), py::arg("truncation"), py::arg("seed"),
        py::arg("step"), py::arg("config_index"),
        "(context [B,Kc] int64, target [B,Kt] int64, context_valid|None, target_valid|None). "
        "Same as masking.collate_ids_py.");
  m.def("sample_mask_batch", &mk::sample_mask_batch, py::arg("config"), py::arg("grid"), py::arg("batch_size"),
        py::arg("seed"), py::arg("step"), py::arg("config_index"), py::arg("max_attempts") = 100,
        py::arg("truncation") = "min",
        "sample_target_mask + collate_ids in one call, without materialising the mask tensor.");
  m.def("splitmix64_draws", &mk::splitmix64_draws, py::arg("key"), py::arg("start"), py::arg("n"),
        "Draws start..start+n-1 of the SplitMix64 stream with this key, as int64 bit patterns.");
}
