// C entry points over libtorch's own c10d (TCPStore, ProcessGroupGloo) for
// src/distributed/c10d.rs. Tensors cross as at::Tensor*, as tch's own C
// wrapper passes them. Every function catches C++ exceptions and returns
// the message through `err` (freed with detris_c10d_free), so nothing
// unwinds into Rust.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../shim_guard.h"
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
};

template <typename F>
int guarded(char** err, F&& f) {
  return detris_shim::guarded(err, "unknown C++ exception in c10d", std::forward<F>(f));
}

std::vector<at::Tensor> tensors_of(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

// Sum over ranks whose backward is again a sum over ranks: the gradient of
// Σ_r L_r with respect to a statistic every rank shares (SyncBatchNorm).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    auto* g = reinterpret_cast<Group*>(group);
    std::vector<at::Tensor> t{x.detach().clone().contiguous()};
    g->backend->allreduce(t)->wait();
    return t[0];
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    std::vector<at::Tensor> t{grads[0].contiguous().clone()};
    g->backend->allreduce(t)->wait();
    return {t[0], at::Tensor()};
  }
};

}  // namespace

extern "C" {

void detris_c10d_free(void* p) { std::free(p); }

// Connects to (or, with is_server, hosts) the TCPStore at host:port and
// joins a Gloo process group of `world` ranks as `rank`. `timeout_ms` bounds
// the rendezvous and every collective.
void* detris_c10d_group_new(const char* host, int port, int rank, int world, int is_server, int64_t timeout_ms,
                            const char* prefix, char** err) {
  Group* out = nullptr;
  guarded(err, [&] {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = is_server != 0;
    so.numWorkers = std::nullopt;
    so.waitWorkers = false;
    so.timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    // Gloo binds to the address that reaches the master: loopback on one
    // node, the node's own address otherwise.
    const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
    if (iface && *iface) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (std::string(host) == "127.0.0.1" || std::string(host) == "localhost") {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 1;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    out = new Group{tcp, pg, rank, world};
  });
  return out;
}

void detris_c10d_group_free(void* g) { delete static_cast<Group*>(g); }

// In place: every tensor becomes its sum over ranks (one coalesced
// all-reduce when all are dense CPU tensors of one dtype).
int detris_c10d_allreduce_sum(void* g, at::Tensor** ts, int n, char** err) {
  return guarded(err, [&] {
    auto* grp = static_cast<Group*>(g);
    auto v = tensors_of(ts, n);
    if (v.empty()) return;
    grp->backend->allreduce_coalesced(v)->wait();
  });
}

// In place: every tensor takes rank `root`'s value.
int detris_c10d_broadcast(void* g, at::Tensor** ts, int n, int root, char** err) {
  return guarded(err, [&] {
    auto* grp = static_cast<Group*>(g);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      grp->backend->broadcast(one, o)->wait();
    }
  });
}

// outs[r] receives rank r's `input` (same shape and dtype on every rank).
int detris_c10d_allgather(void* g, at::Tensor* input, at::Tensor** outs, int n, char** err) {
  return guarded(err, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<std::vector<at::Tensor>> o{tensors_of(outs, n)};
    std::vector<at::Tensor> in{*input};
    grp->backend->allgather(o, in)->wait();
  });
}

int detris_c10d_barrier(void* g, char** err) {
  return guarded(err, [&] { static_cast<Group*>(g)->backend->barrier()->wait(); });
}

// A new tensor: the sum over ranks of `x`, differentiable (its gradient is
// the sum over ranks of the incoming gradient).
at::Tensor* detris_c10d_allreduce_autograd(void* g, at::Tensor* x, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] { out = new at::Tensor(AllReduceSum::apply(*x, reinterpret_cast<int64_t>(g))); });
  return out;
}

int detris_c10d_store_set(void* g, const char* key, const uint8_t* data, size_t len, char** err) {
  return guarded(err, [&] {
    std::vector<uint8_t> v(data, data + len);
    static_cast<Group*>(g)->store->set(std::string(key), v);
  });
}

// Waits (up to the store's timeout) for `key`, then returns its value.
int detris_c10d_store_get(void* g, const char* key, uint8_t** data, size_t* len, char** err) {
  return guarded(err, [&] {
    auto v = static_cast<Group*>(g)->store->get(std::string(key));
    *data = static_cast<uint8_t*>(std::malloc(v.size() ? v.size() : 1));
    std::memcpy(*data, v.data(), v.size());
    *len = v.size();
  });
}

// Whether `key` is present now (no waiting).
int detris_c10d_store_check(void* g, const char* key, int* present, char** err) {
  return guarded(err, [&] { *present = static_cast<Group*>(g)->store->check({std::string(key)}) ? 1 : 0; });
}

int64_t detris_c10d_store_add(void* g, const char* key, int64_t value, char** err) {
  int64_t out = 0;
  guarded(err, [&] { out = static_cast<Group*>(g)->store->add(std::string(key), value); });
  return out;
}

// torch.randperm(n, generator=torch.Generator().manual_seed(seed)): the
// permutation DistributedSampler draws, from a generator of its own (the
// global one is left alone).
at::Tensor* detris_randperm(int64_t n, uint64_t seed, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    out = new at::Tensor(at::randperm(n, gen, at::TensorOptions().dtype(at::kLong)));
  });
  return out;
}

}  // extern "C"
