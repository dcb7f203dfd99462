// A standalone program over the emulated kernels (no torch, no Python), for the checks that
// want their own process: built with -fsanitize=thread it runs forward and backward steps under
// ThreadSanitizer, and it runs the barrier watchdog on a kernel that breaks the barrier rule.
//   check_driver races B H T n_1 .. n_T   the float steps over T steps of n_t <= B running rows,
//                                         then the same forward and backward each in one
//                                         persistent launch
//   check_driver races-half B H T ...     the same in __half: the products on (emulated) WMMA
//   check_driver wmma MODE                MODE: returned, divergent, skipped, argument, ldm or
//                                         unrounded
//   check_driver barrier MODE             MODE: returned, divergent, late or grid (see below)
//   check_driver cooperative BLOCKS BYTES a cooperative launch of BLOCKS blocks of 256
//                                         with BYTES of shared memory: prints "ran" or "refused"
// Exit status 0 when the kernels ran; the emulator's error, if any, goes to stderr.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"

#include "../launch.h"
#include "../persistent_bwd.cuh"
#include "../persistent_fwd.cuh"

namespace {

using bnlstm::BwdParams;
using bnlstm::FwdParams;

std::vector<float> random(size_t n, std::mt19937& gen, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

// v in S (float stays float).
template <typename S>
std::vector<S> as(const std::vector<float>& v) {
  std::vector<S> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = S(v[i]);
  return out;
}

float sum(const std::vector<float>& v) { return std::accumulate(v.begin(), v.end(), 0.f); }
template <typename S>
float sum(const std::vector<S>& v) {
  float total = 0;
  for (const S x : v) total += float(x);
  return total;
}

// Forward steps then the reverse loop, as loops_cuda.cpp launches them, in dtype S (float, or
// __half on tensor cores); running row t per step, batch statistics where at least 2 rows run.
template <typename S>
double run_steps(int B, int H, const std::vector<int>& batch_sizes) {
  const int T = static_cast<int>(batch_sizes.size()), G = 4 * H, L = T;
  std::mt19937 gen(0);
  auto u = random(size_t(T) * B * G, gen, -1, 1);
  auto weight_hh = as<S>(random(size_t(G) * H, gen, -.3f, .3f));
  auto gamma_hh = as<S>(random(G, gen, .05f, .2f)), gamma_c = as<S>(random(H, gen, .05f, .2f));
  auto beta_c = as<S>(random(H, gen, -.1f, .1f));
  auto mean_hh = random(size_t(L) * G, gen, -.5f, .5f), var_hh = random(size_t(L) * G, gen, .5f, 1);
  auto mean_c = random(size_t(L) * H, gen, -.5f, .5f), var_c = random(size_t(L) * H, gen, .5f, 1);
  std::vector<S> y(size_t(T + 1) * B * H);
  std::vector<float> cell(size_t(T + 1) * B * H);
  const auto h0 = as<S>(random(size_t(B) * H, gen, -1, 1));
  const auto c0 = random(size_t(B) * H, gen, -1, 1);
  std::copy(h0.begin(), h0.end(), y.begin());
  std::copy(c0.begin(), c0.end(), cell.begin());
  std::vector<float> hw(size_t(T) * B * G), stat_hh(size_t(T) * 2 * G);
  std::vector<float> stat_c(size_t(T) * 2 * H);
  std::vector<S> h_n(h0), c_n(as<S>(c0));

  const FwdParams fwd{u.data(), hw.data(), y.data(), cell.data(), weight_hh.data(),
                      gamma_hh.data(), gamma_c.data(), beta_c.data(), mean_hh.data(),
                      var_hh.data(), mean_c.data(), var_c.data(), stat_hh.data(), stat_c.data(),
                      h_n.data(), c_n.data(), nullptr, B, H, 1e-5};
  std::vector<int> n(batch_sizes), rows(T);
  n.push_back(0);
  std::iota(rows.begin(), rows.end(), 0);
  std::vector<double> factors(T);
  for (int t = 0; t < T; ++t) factors[t] = batch_sizes[t] >= 2 ? 0.1 : -1.0;
  bnlstm::PersistentPlan plan;
  if (bnlstm::plan_step_fwd<S>(H, plan) != cudaSuccess) {
    throw std::runtime_error("the per-step forward does not fit the emulated device");
  }
  for (int t = 0; t < T; ++t) {
    bnlstm::launch_step_fwd<S>(fwd, plan, n.data(), rows.data(), factors.data(), t, nullptr);
  }

  // the same forward again, every step in one cooperative launch (the grid barrier under TSan)
  if (bnlstm::plan_persistent_fwd<S>(H, plan) != cudaSuccess || !plan.persistent) {
    throw std::runtime_error("the persistent forward does not fit the emulated device");
  }
  auto y2 = y, cell2 = cell, hw2 = hw, mean_hh2 = mean_hh, var_hh2 = var_hh;
  auto mean_c2 = mean_c, var_c2 = var_c, stat_hh2 = stat_hh, stat_c2 = stat_c;
  auto h_n2 = h_n, c_n2 = c_n;
  const FwdParams fwd2{u.data(), hw2.data(), y2.data(), cell2.data(), weight_hh.data(),
                       gamma_hh.data(), gamma_c.data(), beta_c.data(), mean_hh2.data(),
                       var_hh2.data(), mean_c2.data(), var_c2.data(), stat_hh2.data(),
                       stat_c2.data(), h_n2.data(), c_n2.data(), nullptr, B, H, 1e-5};
  unsigned arrivals = 0;
  if (bnlstm::launch_persistent_fwd<S>(fwd2, plan, n.data(), rows.data(), factors.data(), T,
                                           &arrivals, nullptr) != cudaSuccess) {
    throw std::runtime_error("the persistent forward was refused");
  }

  auto dy = as<S>(random(size_t(T) * B * H, gen, -1, 1));
  auto dh_n = random(size_t(B) * H, gen, -1, 1);
  auto dc = random(size_t(B) * H, gen, -1, 1), dc2 = dc;
  std::vector<float> dpre(size_t(T) * B * G), dpre_hh(size_t(T + 1) * B * G), dh(size_t(B) * H);
  std::vector<float> dsum(size_t(T) * G), dsum_c(size_t(T) * 2 * H);
  auto dpre2 = dpre, dpre_hh2 = dpre_hh, dh2 = dh, dsum2 = dsum, dsum_c2 = dsum_c;
  const BwdParams bwd{u.data(), hw.data(), cell.data(), weight_hh.data(), gamma_hh.data(),
                      gamma_c.data(), beta_c.data(), stat_hh.data(), stat_c.data(), dy.data(),
                      dh_n.data(), dpre.data(), dpre_hh.data(), dh.data(), dc.data(),
                      dsum.data(), dsum_c.data(), B, H};
  std::vector<int> use_batch(T);
  for (int t = 0; t < T; ++t) use_batch[t] = batch_sizes[t] >= 2;
  if (bnlstm::plan_step_bwd<S>(H, plan) != cudaSuccess) {
    throw std::runtime_error("the per-step backward does not fit the emulated device");
  }
  for (int t = T - 1; t >= 0; --t) {
    bnlstm::launch_step_bwd<S>(bwd, plan, n.data(), use_batch.data(), t, nullptr);
  }

  // the same backward again, every step in one cooperative launch
  if (bnlstm::plan_persistent_bwd<S>(H, plan) != cudaSuccess || !plan.persistent) {
    throw std::runtime_error("the persistent backward does not fit the emulated device");
  }
  const BwdParams bwd2{u.data(), hw.data(), cell.data(), weight_hh.data(), gamma_hh.data(),
                       gamma_c.data(), beta_c.data(), stat_hh.data(), stat_c.data(), dy.data(),
                       dh_n.data(), dpre2.data(), dpre_hh2.data(), dh2.data(), dc2.data(),
                       dsum2.data(), dsum_c2.data(), B, H};
  arrivals = 0;
  if (bnlstm::launch_persistent_bwd<S>(bwd2, plan, n.data(), use_batch.data(), T, &arrivals,
                                       nullptr) != cudaSuccess) {
    throw std::runtime_error("the persistent backward was refused");
  }
  return double(sum(y)) + sum(dpre_hh) + sum(dc) + sum(y2) + sum(dpre_hh2) + sum(dc2);
}

// A kernel that breaks the barrier rule, one way per mode.
__global__ void barrier_misuse_kernel(int mode) {
  if (mode == 0) {  // returned: the upper half of the block leaves before the barrier
    if (threadIdx.x >= blockDim.x / 2) return;
    __syncthreads();
  } else if (mode == 1) {  // divergent: the two halves wait at different barriers
    if (threadIdx.x % 2 == 0) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else {  // late: thread 0 arrives long after the watchdog gave up on it
    if (threadIdx.x == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    __syncthreads();
  }
}

// A cooperative kernel whose block 1 returns instead of reaching the grid barrier.
__global__ void grid_barrier_misuse_kernel(unsigned* arrivals) {
  if (blockIdx.x == 1) return;
  bnlstm::grid_sync(arrivals, gridDim.x);
}

// A kernel that breaks the rule of the warp-collective WMMA calls, one way per mode; one warp.
__global__ void wmma_misuse_kernel(int mode) {
  using namespace nvcuda;
  __shared__ __align__(32) __half tile[16 * 24];
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  const unsigned lane = threadIdx.x % 32;
  if (mode == 0) {  // returned: lane 5 leaves before the call
    if (lane == 5) return;
    wmma::load_matrix_sync(a, tile, 24);
  } else if (mode == 1) {  // divergent: the odd lanes at another call
    if (lane % 2 == 0) {
      wmma::load_matrix_sync(a, tile, 24);
    } else {
      wmma::load_matrix_sync(a, tile, 24);
    }
  } else if (mode == 2) {  // skipped: lane 0 goes on to __syncthreads, the others at the call
    if (lane != 0) wmma::load_matrix_sync(a, tile, 24);
    __syncthreads();
  } else if (mode == 3) {  // argument: lane 3 passes another (aligned) pointer
    wmma::load_matrix_sync(a, lane == 3 ? tile + 16 : tile, 24);
  } else if (mode == 4) {  // ldm: 20 halves, not a multiple of 16 bytes
    wmma::load_matrix_sync(a, tile, 20);
  } else {  // unrounded: a TF32 product of floats not rounded to TF32 first
    __shared__ __align__(32) float floats[16 * 16];
    for (int i = lane; i < 16 * 16; i += 32) floats[i] = 1.0f + float(i) / 3.0f;
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, floats, 16);
    wmma::load_matrix_sync(fb, floats, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

__global__ void empty_kernel(int) {}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  try {
    if ((what == "races" || what == "races-half") && argc > 4) {
      const int B = std::atoi(argv[2]), H = std::atoi(argv[3]), T = std::atoi(argv[4]);
      std::vector<int> batch_sizes;
      for (int t = 0; t < T && 5 + t < argc; ++t) batch_sizes.push_back(std::atoi(argv[5 + t]));
      if (static_cast<int>(batch_sizes.size()) != T) throw std::invalid_argument("T sizes");
      const double total = what == "races" ? run_steps<float>(B, H, batch_sizes)
                                           : run_steps<__half>(B, H, batch_sizes);
      std::printf("B=%d H=%d T=%d: checksum %.6g\n", B, H, T, total);
      return std::isfinite(total) ? 0 : 1;
    }
    if (what == "barrier" && argc == 3) {
      const std::string mode = argv[2];
      if (mode == "grid") {
        unsigned arrivals = 0;
        return BNLSTM_LAUNCH_COOPERATIVE(grid_barrier_misuse_kernel, dim3(2),
                                         dim3(256), 0, nullptr, &arrivals);
      }
      const int m = mode == "returned" ? 0 : mode == "divergent" ? 1 : mode == "late" ? 2 : -1;
      if (m < 0) throw std::invalid_argument("mode " + mode);
      BNLSTM_LAUNCH(barrier_misuse_kernel, dim3(2), dim3(256), 0, nullptr, m);
      return 0;
    }
    if (what == "wmma" && argc == 3) {
      const std::string mode = argv[2];
      const char* modes[] = {"returned", "divergent", "skipped", "argument", "ldm",
                             "unrounded"};
      const auto m = std::find(std::begin(modes), std::end(modes), mode) - std::begin(modes);
      if (m == std::size(modes)) throw std::invalid_argument("mode " + mode);
      BNLSTM_LAUNCH(wmma_misuse_kernel, dim3(1), dim3(32), 0, nullptr, static_cast<int>(m));
      return 0;
    }
    if (what == "cooperative" && argc == 4) {
      const cudaError_t status =
          BNLSTM_LAUNCH_COOPERATIVE(empty_kernel, dim3(std::atoi(argv[2])),
                                    dim3(256), std::atoi(argv[3]), nullptr, 0);
      std::printf("%s\n", status == cudaSuccess                           ? "ran"
                          : status == cudaErrorCooperativeLaunchTooLarge ? "refused"
                                                                          : "error");
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: %s races|races-half B H T n_1 .. n_T | "
               "barrier returned|divergent|late|grid | "
               "wmma returned|divergent|skipped|argument|ldm|unrounded | "
               "cooperative BLOCKS BYTES\n",
               argv[0]);
  return 2;
}
