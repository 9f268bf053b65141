// The one way the project's C++ shims (src/distributed/c10d_shim.cpp,
// src/model/onednn_shim.cpp) hand a C++ exception to Rust: as a malloc'd
// message the Rust side frees, and a -1 return, so nothing unwinds into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

#include <c10/util/Exception.h>

namespace detris_shim {

inline char* copy_message(const char* what) {
  char* s = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (s) std::strcpy(s, what);
  return s;
}

// Runs f; on an exception stores its message in *err and returns -1. `unknown` names
// the shim in the message of an exception that carries none.
template <typename F>
int guarded(char** err, const char* unknown, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message(unknown);
  }
  return -1;
}

}  // namespace detris_shim
