// The LSTM's two recurrences as XLA FFI handlers (built by build.py, wrapped by lstm.py).
//
// XLA:CPU runs the recurrence as a loop of one small matmul plus about ten tiny element-wise
// kernels per step; the kernels and their thread-pool hand-offs cost as much as the matmuls
// (shared/reference/perf-cpu.md, "The LSTM"). Here each direction's whole recurrence is one
// call: per step one sgemm (the BLAS numpy ships, single-threaded per calling thread) and the
// gate math fused in one pass over the row. The batch is split into contiguous row blocks, one
// per thread; rows never interact, so threads only meet at the end of the call.
//
// Layouts (row-major, time-major): xp (T,B,4H) input projection, u (H,4H) recurrent kernel,
// bias (4H), gates i,f,g,o (Flax's order). Forward saves the gates' activations
// (T,B,4H), the cell states (T,B,H) and the hidden states (T,B,H). Backward takes those and
// every step's h cotangent and returns the gates' pre-activation gradients dz (T,B,4H) and the
// initial state's cotangents; the weight gradients are large matmuls over dz done by XLA.
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using sgemm_t = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const float*, int64_t, float, float*, int64_t);
using local_threads_t = int (*)(int);
sgemm_t sgemm = nullptr;
local_threads_t local_threads = nullptr;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

struct Dims {
  int64_t t, b, h;
};

// Rows [b0, b1) of the forward recurrence.
void forward_rows(Dims d, int64_t b0, int64_t b1, const float* xp, const float* u,
                  const float* bias, const float* c0, const float* h0, float* gates, float* cs,
                  float* hs) {
  const int64_t H = d.h, G = 4 * H, B = d.b, rows = b1 - b0;
  for (int64_t t = 0; t < d.t; ++t) {
    const float* hprev = (t ? hs + (t - 1) * B * H : h0) + b0 * H;
    const float* cprev = (t ? cs + (t - 1) * B * H : c0) + b0 * H;
    float* z = gates + (t * B + b0) * G;
    // z = xp + bias, then z += h_prev @ u (the bias added here saves XLA a pass over xp).
    const float* xpt = xp + (t * B + b0) * G;
    for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
      for (int64_t j = 0; j < G; ++j) z[r * G + j] = xpt[r * G + j] + bias[j];
    }
    sgemm(kRowMajor, kNoTrans, kNoTrans, rows, G, H, 1.f, hprev, H, u, G, 1.f, z, G);
    float* c = cs + (t * B + b0) * H;
    float* h = hs + (t * B + b0) * H;
    for (int64_t r = 0; r < rows; ++r) {
      float* zr = z + r * G;
      const float* cp = cprev + r * H;
      float* cr = c + r * H;
      float* hr = h + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const float i = sigmoid(zr[j]), f = sigmoid(zr[H + j]), g = tanhf(zr[2 * H + j]),
                    o = sigmoid(zr[3 * H + j]);
        zr[j] = i;
        zr[H + j] = f;
        zr[2 * H + j] = g;
        zr[3 * H + j] = o;
        const float cn = f * cp[j] + i * g;
        cr[j] = cn;
        hr[j] = o * tanhf(cn);
      }
    }
  }
}

// Rows [b0, b1) of the backward recurrence; dc, dh hold the final state's cotangents on entry
// and the initial state's on exit.
void backward_rows(Dims d, int64_t b0, int64_t b1, const float* gates, const float* cs,
                   const float* c0, const float* u, const float* dys, float* dc, float* dh,
                   float* dz) {
  const int64_t H = d.h, G = 4 * H, B = d.b, rows = b1 - b0;
  for (int64_t t = d.t - 1; t >= 0; --t) {
    const float* gt = gates + (t * B + b0) * G;
    const float* ct = cs + (t * B + b0) * H;
    const float* cp = (t ? cs + (t - 1) * B * H : c0) + b0 * H;
    const float* dy = dys + (t * B + b0) * H;
    float* dzt = dz + (t * B + b0) * G;
    for (int64_t r = 0; r < rows; ++r) {
      const float* g4 = gt + r * G;
      float* dr = dzt + r * G;
      float* dcr = dc + (b0 + r) * H;
      const float* dhr = dh + (b0 + r) * H;
      const float* cr = ct + r * H;
      const float* cpr = cp + r * H;
      const float* dyr = dy + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const float i = g4[j], f = g4[H + j], g = g4[2 * H + j], o = g4[3 * H + j];
        const float dhv = dhr[j] + dyr[j];
        const float tc = tanhf(cr[j]);
        const float dcv = dcr[j] + dhv * o * (1.f - tc * tc);
        dr[j] = dcv * g * i * (1.f - i);
        dr[H + j] = dcv * cpr[j] * f * (1.f - f);
        dr[2 * H + j] = dcv * i * (1.f - g * g);
        dr[3 * H + j] = dhv * tc * o * (1.f - o);
        dcr[j] = dcv * f;
      }
    }
    sgemm(kRowMajor, kNoTrans, kTrans, rows, H, G, 1.f, dzt, G, u, G, 0.f, dh + b0 * H, H);
  }
}

// Runs fn(b0, b1) on `blocks` contiguous row blocks: the calling thread and tasks on XLA's
// own intra-op thread pool claim blocks from one counter, so no thread is created per call,
// and a task that starts late (or never: XLA may run tasks on the caller, or on a pool of one)
// finds nothing left and the caller has done the work itself. The caller waits only for
// blocks another thread has claimed and is running, so it cannot deadlock.
struct Split {
  std::atomic<int64_t> next{0}, done{0};
  int64_t blocks = 0, batch = 0, step = 0;
  std::function<void(int64_t, int64_t)> fn;
  std::mutex m;
  std::condition_variable cv;

  void work() {
    const int before = local_threads(1);
    for (int64_t k; (k = next.fetch_add(1)) < blocks;) {
      fn(k * step, std::min(batch, (k + 1) * step));
      if (done.fetch_add(1) + 1 == blocks) {
        std::lock_guard<std::mutex> lock(m);
        cv.notify_all();
      }
    }
    local_threads(before);
  }
};

template <typename F>
void split_rows(ffi::ThreadPool& pool, int64_t batch, int64_t threads, F fn) {
  auto s = std::make_shared<Split>();
  s->batch = batch;
  threads = std::max<int64_t>(1, std::min(threads, batch));
  s->step = (batch + threads - 1) / threads;
  s->blocks = (batch + s->step - 1) / s->step;
  s->fn = fn;
  for (int64_t k = 1; k < s->blocks; ++k) pool.Schedule([s] { s->work(); });
  s->work();
  std::unique_lock<std::mutex> lock(s->m);
  s->cv.wait(lock, [&] { return s->done.load() == s->blocks; });
  // Late tasks hold `s` (shared) and find no block left; fn's captures are not used by them.
}

ffi::Error Forward(ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> u,
                   ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                   ffi::ThreadPool pool, int64_t threads,
                   ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> cs,
                   ffi::ResultBuffer<ffi::F32> hs) {
  auto dims = xp.dimensions();
  if (dims.size() != 3 || u.dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("lstm forward: xp must be (T,B,4H) and u (H,4H)");
  }
  const Dims d{dims[0], dims[1], u.dimensions()[0]};
  split_rows(pool, d.b, threads, [&](int64_t b0, int64_t b1) {
    forward_rows(d, b0, b1, xp.typed_data(), u.typed_data(), bias.typed_data(),
                 c0.typed_data(), h0.typed_data(), gates->typed_data(), cs->typed_data(), hs->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> u,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dc_last,
                    ffi::Buffer<ffi::F32> dh_last, ffi::ThreadPool pool,
                    int64_t threads,
                    ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dc0,
                    ffi::ResultBuffer<ffi::F32> dh0) {
  auto dims = cs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("lstm backward: cs must be (T,B,H)");
  const Dims d{dims[0], dims[1], dims[2]};
  std::memcpy(dc0->typed_data(), dc_last.typed_data(), sizeof(float) * d.b * d.h);
  std::memcpy(dh0->typed_data(), dh_last.typed_data(), sizeof(float) * d.b * d.h);
  split_rows(pool, d.b, threads, [&](int64_t b0, int64_t b1) {
    backward_rows(d, b0, b1, gates.typed_data(), cs.typed_data(), c0.typed_data(),
                  u.typed_data(), dys.typed_data(), dc0->typed_data(), dh0->typed_data(),
                  dz->typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NnspecLstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NnspecLstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Binds the BLAS the handlers call: numpy's bundled OpenBLAS (its cblas_sgemm and its
// per-thread thread-count setter, so that each handler thread runs sgemm on itself alone).
extern "C" int nnspec_bind_blas(const char* library, const char* sgemm_name,
                                const char* local_threads_name) {
  void* lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return 1;
  sgemm = reinterpret_cast<sgemm_t>(dlsym(lib, sgemm_name));
  local_threads = reinterpret_cast<local_threads_t>(dlsym(lib, local_threads_name));
  return sgemm && local_threads ? 0 : 2;
}
