// The few Gloo declarations that libtorch's ProcessGroupGloo.hpp needs to
// compile. Gloo's headers are not shipped in the torch wheel, and no packaged
// Gloo matches the one libtorch 2.11 was built with, so this file declares
// only what the shim's translation unit touches, written by this project:
//   - gloo::IStore and gloo::rendezvous::Store with the virtual functions in
//     the order of libtorch 2.11's vtable of c10d::ProcessGroupGloo::GlooStore
//     (12 slots: two destructors, set, get, wait_get, wait(keys, timeout),
//     has_v2_support, multi_get, multi_set, append, add, wait(keys)).
//     build.rs reads that vtable from libtorch_cpu.so and fails the build when
//     it has another length or order;
//   - gloo::Context with setTimeout (an inline member of ProcessGroupGloo
//     names it; the shim never calls it);
//   - forward declarations of the transport classes held by pointer.
// The shim never creates or calls any of these objects itself: they are held
// by libtorch's own code, which was compiled against the real definitions.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

// libtorch 2.11 was built against a Gloo with the extended store API.
#define GLOO_STORE_HAS_STORE_V2 1

namespace gloo {

class IStore {
 public:
  virtual ~IStore() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual std::vector<char> wait_get(const std::string& key, const std::chrono::milliseconds& timeout);
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
  virtual bool has_v2_support() = 0;
  virtual std::vector<std::vector<char>> multi_get(const std::vector<std::string>& keys) = 0;
  virtual void multi_set(const std::vector<std::string>& keys, const std::vector<std::vector<char>>& values) = 0;
  virtual void append(const std::string& key, const std::vector<char>& data) = 0;
  virtual int64_t add(const std::string& key, int64_t value) = 0;
};

namespace rendezvous {
class Store : public IStore {
 public:
  ~Store() override = default;
  virtual void wait(const std::vector<std::string>& keys) = 0;
};
}  // namespace rendezvous

class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport

}  // namespace gloo
