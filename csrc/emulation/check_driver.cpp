// A standalone program over the emulated kernels (no torch, no Python), for the checks that
// want their own process: built with -fsanitize=thread it runs forward and backward steps under
// ThreadSanitizer, and it runs the barrier watchdog on a kernel that breaks the barrier rule.
//   check_driver races B H T n_1 .. n_T   the float steps over T steps of n_t <= B running rows,
//                                         then the same forward in one persistent launch
//   check_driver barrier MODE             MODE: returned, divergent, late or grid (see below)
//   check_driver cooperative BLOCKS BYTES a cooperative launch of BLOCKS blocks of kThreads
//                                         with BYTES of shared memory: prints "ran" or "refused"
// Exit status 0 when the kernels ran; the emulator's error, if any, goes to stderr.
#include <cmath>
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

// Forward steps then the reverse loop, as loops_cuda.cpp launches them; running row t per step,
// batch statistics where at least 2 rows run.
double run_steps(int B, int H, const std::vector<int>& batch_sizes) {
  const int T = static_cast<int>(batch_sizes.size()), G = 4 * H, L = T;
  std::mt19937 gen(0);
  auto u = random(size_t(T) * B * G, gen, -1, 1);
  auto weight_hh = random(size_t(G) * H, gen, -.3f, .3f);
  auto gamma_hh = random(G, gen, .05f, .2f), gamma_c = random(H, gen, .05f, .2f);
  auto beta_c = random(H, gen, -.1f, .1f);
  auto mean_hh = random(size_t(L) * G, gen, -.5f, .5f), var_hh = random(size_t(L) * G, gen, .5f, 1);
  auto mean_c = random(size_t(L) * H, gen, -.5f, .5f), var_c = random(size_t(L) * H, gen, .5f, 1);
  std::vector<float> y(size_t(T + 1) * B * H), cell(size_t(T + 1) * B * H);
  const auto h0 = random(size_t(B) * H, gen, -1, 1), c0 = random(size_t(B) * H, gen, -1, 1);
  std::copy(h0.begin(), h0.end(), y.begin());
  std::copy(c0.begin(), c0.end(), cell.begin());
  std::vector<float> hw(size_t(T) * B * G), stat_hh(size_t(T) * 2 * G);
  std::vector<float> stat_c(size_t(T) * 2 * H), h_n(h0), c_n(c0);

  const FwdParams fwd{u.data(), hw.data(), y.data(), cell.data(), weight_hh.data(),
                      gamma_hh.data(), gamma_c.data(), beta_c.data(), mean_hh.data(),
                      var_hh.data(), mean_c.data(), var_c.data(), stat_hh.data(), stat_c.data(),
                      h_n.data(), c_n.data(), nullptr, B, H, 1e-5};
  for (int t = 0; t < T; ++t) {
    const int n = batch_sizes[t], n_next = t + 1 < T ? batch_sizes[t + 1] : 0;
    bnlstm::launch_fwd_step<float>(fwd, t, n, n_next, t, n >= 2 ? 0.1 : -1.0, nullptr);
  }

  // the same forward again, every step in one cooperative launch (the grid barrier under TSan)
  bnlstm::PersistentPlan plan;
  if (bnlstm::plan_persistent_fwd<float>(H, plan) != cudaSuccess || !plan.persistent) {
    throw std::runtime_error("the persistent forward does not fit the emulated device");
  }
  std::vector<int> n(batch_sizes), rows(T);
  n.push_back(0);
  std::iota(rows.begin(), rows.end(), 0);
  std::vector<double> factors(T);
  for (int t = 0; t < T; ++t) factors[t] = batch_sizes[t] >= 2 ? 0.1 : -1.0;
  auto y2 = y, cell2 = cell, hw2 = hw, mean_hh2 = mean_hh, var_hh2 = var_hh;
  auto mean_c2 = mean_c, var_c2 = var_c, stat_hh2 = stat_hh, stat_c2 = stat_c;
  auto h_n2 = h_n, c_n2 = c_n;
  const FwdParams fwd2{u.data(), hw2.data(), y2.data(), cell2.data(), weight_hh.data(),
                       gamma_hh.data(), gamma_c.data(), beta_c.data(), mean_hh2.data(),
                       var_hh2.data(), mean_c2.data(), var_c2.data(), stat_hh2.data(),
                       stat_c2.data(), h_n2.data(), c_n2.data(), nullptr, B, H, 1e-5};
  unsigned arrivals = 0;
  if (bnlstm::launch_persistent_fwd<float>(fwd2, plan, n.data(), rows.data(), factors.data(), T,
                                           &arrivals, nullptr) != cudaSuccess) {
    throw std::runtime_error("the persistent forward was refused");
  }

  auto dy = random(size_t(T) * B * H, gen, -1, 1), dh_n = random(size_t(B) * H, gen, -1, 1);
  auto dc = random(size_t(B) * H, gen, -1, 1);
  std::vector<float> dpre(size_t(T) * B * G), dpre_hh(size_t(T + 1) * B * G), dh(size_t(B) * H);
  std::vector<float> dsum(size_t(T) * G), dsum_c(size_t(T) * 2 * H);
  const BwdParams bwd{u.data(), hw.data(), cell.data(), weight_hh.data(), gamma_hh.data(),
                      gamma_c.data(), beta_c.data(), stat_hh.data(), stat_c.data(), dy.data(),
                      dh_n.data(), dpre.data(), dpre_hh.data(), dh.data(), dc.data(),
                      dsum.data(), dsum_c.data(), B, H};
  for (int t = T - 1; t >= 0; --t) {
    const int n = batch_sizes[t], n_next = t + 1 < T ? batch_sizes[t + 1] : 0;
    bnlstm::launch_bwd_step<float>(bwd, t, n, n_next, n >= 2, nullptr);
  }
  double total = 0;
  for (float v : y) total += v;
  for (float v : dpre_hh) total += v;
  for (float v : dc) total += v;
  for (float v : y2) total += v;
  return total;
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

__global__ void empty_kernel(int) {}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  try {
    if (what == "races" && argc > 4) {
      const int B = std::atoi(argv[2]), H = std::atoi(argv[3]), T = std::atoi(argv[4]);
      std::vector<int> batch_sizes;
      for (int t = 0; t < T && 5 + t < argc; ++t) batch_sizes.push_back(std::atoi(argv[5 + t]));
      if (static_cast<int>(batch_sizes.size()) != T) throw std::invalid_argument("T sizes");
      const double total = run_steps(B, H, batch_sizes);
      std::printf("B=%d H=%d T=%d: checksum %.6g\n", B, H, T, total);
      return std::isfinite(total) ? 0 : 1;
    }
    if (what == "barrier" && argc == 3) {
      const std::string mode = argv[2];
      if (mode == "grid") {
        unsigned arrivals = 0;
        return BNLSTM_LAUNCH_COOPERATIVE(grid_barrier_misuse_kernel, dim3(2),
                                         dim3(bnlstm::kThreads), 0, nullptr, &arrivals);
      }
      const int m = mode == "returned" ? 0 : mode == "divergent" ? 1 : mode == "late" ? 2 : -1;
      if (m < 0) throw std::invalid_argument("mode " + mode);
      BNLSTM_LAUNCH(barrier_misuse_kernel, dim3(2), dim3(bnlstm::kThreads), nullptr, m);
      return 0;
    }
    if (what == "cooperative" && argc == 4) {
      const cudaError_t status =
          BNLSTM_LAUNCH_COOPERATIVE(empty_kernel, dim3(std::atoi(argv[2])),
                                    dim3(bnlstm::kThreads), std::atoi(argv[3]), nullptr, 0);
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
               "usage: %s races B H T n_1 .. n_T | barrier returned|divergent|late|grid | "
               "cooperative BLOCKS BYTES\n",
               argv[0]);
  return 2;
}
