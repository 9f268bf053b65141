// C entry points over libtorch's oneDNN linear operators for
// src/model/packed_linear.rs, reached through the dispatcher by their
// registered names (the operators inductor's CPU code calls):
//   bf16  mkldnn::_reorder_linear_weight once, then mkldnn::_linear_pointwise
//   int8  weights quantised once per output channel (symmetric), packed by
//         onednn::qlinear_prepack; activations quantised per tensor on each
//         call (asymmetric uint8), then onednn::qlinear_pointwise
// Tensors cross as at::Tensor*, as tch's own C wrapper passes them. Every
// function catches C++ exceptions and returns the message through `err`
// (freed with detris_onednn_free), so nothing unwinds into Rust.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../shim_guard.h"
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace {

enum Epilogue : int { kNone = 0, kGelu = 1 };

struct Packed {
  bool int8;
  int64_t in, out;
  at::Tensor weight;  // oneDNN's blocked layout (bf16) or its packed int8 weight
  std::optional<at::Tensor> bias;
  at::Tensor scales, zero_points;  // int8: per output channel
};

template <typename F>
int guarded(char** err, F&& f) {
  return detris_shim::guarded(err, "unknown C++ exception in the oneDNN shim", std::forward<F>(f));
}

const c10::OperatorHandle& op(const char* name) {
  // One lookup per operator; the handles live as long as the process.
  static std::vector<std::pair<std::string, c10::OperatorHandle>> cache;
  static std::mutex lock;
  std::lock_guard<std::mutex> g(lock);
  for (auto& [n, h] : cache)
    if (n == name) return h;
  cache.emplace_back(name, c10::Dispatcher::singleton().findSchemaOrThrow(name, ""));
  return cache.back().second;
}

at::Tensor call(const char* name, std::vector<c10::IValue> args) {
  torch::jit::Stack stack(std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  op(name).callBoxed(&stack);
  return stack.back().toTensor();
}

const char* attr_of(int epilogue) {
  TORCH_CHECK(epilogue == kNone || epilogue == kGelu, "packed linear: unknown epilogue ", epilogue);
  return epilogue == kGelu ? "gelu" : "none";
}

// x (..., in) as the 2-D contiguous matrix oneDNN reads, and the output's shape.
std::pair<at::Tensor, std::vector<int64_t>> flatten(const Packed& p, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "packed linear: the input must be on the CPU");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == p.in, "packed linear: the input's last dimension is ",
              x.dim() ? x.size(-1) : 0, ", the weight's is ", p.in);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = p.out;
  return {x.reshape({-1, p.in}).contiguous(), shape};
}

at::Tensor forward_bf16(const Packed& p, const at::Tensor& x, int epilogue) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "packed bf16 linear: the input is ", x.scalar_type(),
              ", not BFloat16");
  auto [x2, shape] = flatten(p, x);
  // str? algorithm: "none" picks the exact (erf) GELU, as torch.nn.GELU().
  auto y = call("mkldnn::_linear_pointwise",
                {x2, p.weight, p.bias ? c10::IValue(*p.bias) : c10::IValue(), std::string(attr_of(epilogue)),
                 c10::List<std::optional<at::Scalar>>(), std::string("none")});
  return y.view(shape);
}

// Per-tensor asymmetric uint8 from the activation's range (what VNNI and
// AMX-INT8 multiply natively: unsigned activations by signed weights).
std::tuple<at::Tensor, double, int64_t> quantise_activation(const at::Tensor& x) {
  auto [lo_t, hi_t] = at::aminmax(x);
  double lo = std::min(0.0, lo_t.item<double>()), hi = std::max(0.0, hi_t.item<double>());
  TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi), "int8 linear: the input holds a non-finite value");
  double scale = std::max((hi - lo) / 255.0, 1e-12);
  int64_t zero_point = std::clamp<int64_t>(std::llround(-lo / scale), 0, 255);
  auto q = at::quantize_per_tensor(x.to(at::kFloat), scale, zero_point, at::kQUInt8);
  // The uint8 payload, shared: the view's deleter keeps the quantised tensor alive.
  auto u8 = at::from_blob(q.data_ptr(), q.sizes(), [q](void*) {}, at::TensorOptions().dtype(at::kByte));
  return {u8, scale, zero_point};
}

at::Tensor forward_int8(const Packed& p, const at::Tensor& x, int epilogue) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "int8 linear: the input is ", x.scalar_type(), ", not BFloat16 or Float");
  auto [x2, shape] = flatten(p, x);
  auto [qx, scale, zero_point] = quantise_activation(x2);
  auto y = call("onednn::qlinear_pointwise",
                {qx, scale, zero_point, p.weight, p.scales, p.zero_points,
                 p.bias ? c10::IValue(*p.bias) : c10::IValue(), 1.0, int64_t(0), c10::IValue(x.scalar_type()),
                 std::string(attr_of(epilogue)), c10::List<std::optional<at::Scalar>>(), std::string("none")});
  return y.view(shape);
}

void check_weight(const at::Tensor& w, const at::Tensor* bias) {
  TORCH_CHECK(w.dim() == 2, "packed linear: the weight must be (out, in), got ", w.dim(), " dimensions");
  TORCH_CHECK(w.device().is_cpu(), "packed linear: oneDNN's packed weights are CPU-only");
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == w.size(0)),
              "packed linear: the bias must be (out) = (", w.size(0), ")");
}

}  // namespace

extern "C" {

void detris_onednn_free(void* p) { std::free(p); }

// bf16: the weight (and bias) cast to bf16, the weight reordered once into
// the layout oneDNN picks for `tokens` rows (any row count stays correct).
void* detris_onednn_bf16_new(at::Tensor* weight, at::Tensor* bias, int64_t tokens, char** err) {
  Packed* out = nullptr;
  guarded(err, [&] {
    check_weight(*weight, bias);
    auto w = weight->detach().to(at::kBFloat16).contiguous();
    auto packed = call("mkldnn::_reorder_linear_weight", {w, tokens > 0 ? c10::IValue(tokens) : c10::IValue()});
    std::optional<at::Tensor> b;
    if (bias) b = bias->detach().to(at::kBFloat16).contiguous();
    out = new Packed{false, w.size(1), w.size(0), packed, b, at::Tensor(), at::Tensor()};
  });
  return out;
}

// int8: symmetric per-output-channel weights (zero point 0, as oneDNN's int8
// weights require), range ±127; the bias stays f32.
void* detris_onednn_int8_new(at::Tensor* weight, at::Tensor* bias, int64_t tokens, char** err) {
  Packed* out = nullptr;
  guarded(err, [&] {
    check_weight(*weight, bias);
    auto w = weight->detach().to(at::kFloat);
    auto scales = w.abs().amax({1}).clamp_min(1e-12).div(127.0).contiguous();
    auto q = w.div(scales.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar).contiguous();
    std::vector<int64_t> x_shape = {std::max<int64_t>(tokens, 1), w.size(1)};
    auto packed = call("onednn::qlinear_prepack", {q, c10::IValue(x_shape)});
    std::optional<at::Tensor> b;
    if (bias) b = bias->detach().to(at::kFloat).contiguous();
    out = new Packed{true, w.size(1), w.size(0), packed, b, scales, at::zeros({w.size(0)}, at::kLong)};
  });
  return out;
}

void detris_onednn_packed_free(void* p) { delete static_cast<Packed*>(p); }

at::Tensor* detris_onednn_packed_forward(void* p, at::Tensor* x, int epilogue, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] {
    const auto& packed = *static_cast<Packed*>(p);
    out = new at::Tensor(packed.int8 ? forward_int8(packed, *x, epilogue) : forward_bf16(packed, *x, epilogue));
  });
  return out;
}

}  // extern "C"
