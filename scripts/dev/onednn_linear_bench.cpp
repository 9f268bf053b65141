// Times DINOv2-B's linear products (448 input: 1029 tokens) four ways on the
// CPU, interleaved in one process so that the ratios survive a noisy machine:
//   f32    at::linear in f32 (the reference for the errors)
//   bf16   at::linear in bf16
//   packed oneDNN with the bf16 weight reordered once (mkldnn::_reorder_linear_weight)
//          then mkldnn::_linear_pointwise, the operators inductor calls
//   int8   weights quantised once per output channel (symmetric int8), activations
//          quantised per tensor on every call (asymmetric uint8), through
//          onednn::qlinear_prepack + onednn::qlinear_pointwise (PyTorch's x86 int8 path),
//          bf16 output
// Each with and without a GELU epilogue on the MLP's first product.
// Build and run:
//   source scripts/setup.sh
//   g++ -O2 -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 scripts/dev/onednn_linear_bench.cpp \
//     -I$LIBTORCH/include -I$LIBTORCH/include/torch/csrc/api/include \
//     -L$LIBTORCH/lib -Wl,-rpath,$LIBTORCH/lib -Wl,--no-as-needed -ltorch_cpu -lc10 \
//     -o /tmp/onednn_linear_bench && /tmp/onednn_linear_bench [threads] [rounds]
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

using at::Tensor;

static c10::OperatorHandle op(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

static Tensor call1(const c10::OperatorHandle& h, std::vector<c10::IValue> args) {
  torch::jit::Stack stack(std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  h.callBoxed(&stack);
  return stack.back().toTensor();
}

struct Int8Weight {
  Tensor packed, scales, zero_points, bias;
};

static Int8Weight quantise_weight(const Tensor& w, const Tensor& b, int64_t m, int64_t k) {
  // Symmetric per output channel: the zero point is 0, as oneDNN's int8 weights require.
  auto scales = w.abs().amax({1}).clamp_min(1e-8).div(127.0).to(at::kFloat);
  auto q = w.div(scales.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar);
  static auto prepack = op("onednn::qlinear_prepack");
  auto packed = call1(prepack, {q, c10::IValue(std::vector<int64_t>{m, k})});
  return {packed, scales, at::zeros({w.size(0)}, at::kLong), b.to(at::kFloat)};
}

// Per-tensor asymmetric uint8 (what VNNI multiplies natively), from the activation's range.
static std::tuple<Tensor, double, int64_t> quantise_act(const Tensor& x) {
  auto [lo, hi] = at::aminmax(x);
  double mn = std::min(0.0, lo.item<double>()), mx = std::max(0.0, hi.item<double>());
  double scale = std::max((mx - mn) / 255.0, 1e-8);
  int64_t zp = std::clamp<int64_t>(std::llround(-mn / scale), 0, 255);
  auto q = at::quantize_per_tensor(x.to(at::kFloat), scale, zp, at::kQUInt8);
  // The uint8 payload without a copy: the view keeps the quantised tensor alive.
  auto u8 = at::from_blob(q.data_ptr(), q.sizes(), [q](void*) {}, at::TensorOptions().dtype(at::kByte));
  return {u8, scale, zp};
}

static Tensor int8_linear(const Tensor& x, const Int8Weight& w, const char* post) {
  static auto qlinear = op("onednn::qlinear_pointwise");
  auto [qx, scale, zp] = quantise_act(x);
  return call1(qlinear, {qx, scale, zp, w.packed, w.scales, w.zero_points, w.bias, 1.0, int64_t(0),
                         c10::IValue(at::kBFloat16), std::string(post), c10::List<std::optional<at::Scalar>>(),
                         std::string("none")});
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

static double minimum(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

static double rel_l2(const Tensor& a, const Tensor& ref) {
  auto d = a.to(at::kDouble) - ref.to(at::kDouble);
  return (d.norm() / ref.to(at::kDouble).norm()).item<double>();
}

int main(int argc, char** argv) {
  int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  int rounds = argc > 2 ? std::atoi(argv[2]) : 15;
  at::set_num_threads(threads);
  at::manual_seed(0);
  const int64_t m = 1029;  // 32x32 patches + class token + 4 registers
  struct Shape { const char* name; int64_t k, n; bool gelu; };
  std::vector<Shape> shapes = {{"mlp.fc1 768->3072", 768, 3072, true},
                               {"mlp.fc2 3072->768", 3072, 768, false},
                               {"attn.qkv 768->2304", 768, 2304, false},
                               {"attn.proj 768->768", 768, 768, false}};
  static auto reorder = op("mkldnn::_reorder_linear_weight");
  static auto pointwise = op("mkldnn::_linear_pointwise");
  auto packed_linear = [&](const Tensor& x, const Tensor& wp, const Tensor& b, const char* attr) {
    return call1(pointwise, {x, wp, b, std::string(attr), c10::List<std::optional<at::Scalar>>(),
                             std::string("none")});
  };
  std::printf("threads %d, rounds %d (interleaved), m = %ld tokens; GFLOP/s from the minimum; x = bf16 linear time / this time\n", threads, rounds, (long)m);
  for (const auto& s : shapes) {
    auto x = at::randn({m, s.k});
    auto w = at::randn({s.n, s.k}) * 0.02;
    auto b = at::randn({s.n}) * 0.02;
    auto xb = x.to(at::kBFloat16), wb = w.to(at::kBFloat16), bb = b.to(at::kBFloat16);
    auto wp = call1(reorder, {wb, c10::IValue(m)});
    auto w8 = quantise_weight(w, b, m, s.k);
    std::map<std::string, std::function<Tensor()>> cases = {
        {"a f32 linear", [&] { return at::linear(x, w, b); }},
        {"b bf16 linear", [&] { return at::linear(xb, wb, bb); }},
        {"c bf16 packed", [&] { return packed_linear(xb, wp, bb, "none"); }},
        {"d int8 dynamic", [&] { return int8_linear(xb, w8, "none"); }},
        {"e int8 act quantise only", [&] { return std::get<0>(quantise_act(xb)); }},
    };
    if (s.gelu) {
      cases["f bf16 linear+gelu"] = [&] { return at::gelu(at::linear(xb, wb, bb)); };
      cases["g bf16 packed gelu epilogue"] = [&] { return packed_linear(xb, wp, bb, "gelu"); };
      cases["h int8 gelu epilogue"] = [&] { return int8_linear(xb, w8, "gelu"); };
      cases["i f32 linear+gelu"] = [&] { return at::gelu(at::linear(x, w, b)); };
    }
    std::map<std::string, std::vector<double>> times;
    for (auto& [name, f] : cases) for (int i = 0; i < 3; ++i) f();  // warm-up: primitives, caches
    for (int r = 0; r < rounds; ++r) {
      for (auto& [name, f] : cases) {
        auto t0 = std::chrono::steady_clock::now();
        auto y = f();
        auto t1 = std::chrono::steady_clock::now();
        times[name].push_back(std::chrono::duration<double>(t1 - t0).count());
      }
    }
    double flop = 2.0 * m * s.k * s.n;
    std::printf("\n%s  (%.2f GFLOP)\n", s.name, flop / 1e9);
    // The median is what a run sees on this shared machine; the minimum is the
    // uncontended speed (other processes only ever add time).
    double med_bf16 = median(times["b bf16 linear"]), min_bf16 = minimum(times["b bf16 linear"]);
    std::printf("  %-30s %9s %9s %9s %8s %8s\n", "case", "median ms", "min ms", "GFLOP/s", "x(med)", "x(min)");
    for (auto& [name, t] : times) {
      double med = median(t), mn = minimum(t);
      std::printf("  %-30s %9.3f %9.3f %9.0f %7.2fx %7.2fx\n", name.c_str(), med * 1e3, mn * 1e3,
                  name[0] == 'e' ? 0.0 : flop / mn / 1e9, med_bf16 / med, min_bf16 / mn);
    }
    auto ref = at::linear(x, w, b);
    std::printf("  rel L2 vs f32: bf16 linear %.2e, bf16 packed %.2e, int8 %.2e\n",
                rel_l2(at::linear(xb, wb, bb), ref), rel_l2(packed_linear(xb, wp, bb, "none"), ref),
                rel_l2(int8_linear(xb, w8, "none"), ref));
    if (s.gelu) {
      auto refg = at::gelu(ref);
      std::printf("  rel L2 vs f32 (gelu): bf16 packed epilogue %.2e, int8 epilogue %.2e\n",
                  rel_l2(packed_linear(xb, wp, bb, "gelu"), refg), rel_l2(int8_linear(xb, w8, "gelu"), refg));
    }
  }
  return 0;
}
