// Element-wise and data-movement kernels, and the kernels' shared helpers.
#include "runtime/src/cpu/Kernels.h"

#include "kiln/Float.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kiln::cpu {

namespace {

std::atomic<bool> vectorEnabled{true};
std::atomic<bool> avx512Enabled{true};

bool cpuHasAvx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return has;
}

bool cpuHasAvx512vl() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return has;
}

[[noreturn]] void unsupportedType(const char *kernel, ElementType type) {
  std::fprintf(stderr, "kiln: %s: unsupported weight type %d\n", kernel,
               static_cast<int>(type));
  std::abort();
}

/// Converts `count` weights starting at element `begin` to fp32.
void loadRow(Weight w, int64_t begin, int64_t count, float *out) {
  switch (w.type) {
  case ElementType::F32:
    std::memcpy(out, static_cast<const float *>(w.data) + begin,
                static_cast<size_t>(count) * sizeof(float));
    return;
  case ElementType::BF16: {
    const uint16_t *p = static_cast<const uint16_t *>(w.data) + begin;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i)
      out[i] = bf16ToFloat(p[i]);
    return;
  }
  case ElementType::F16: {
    const uint16_t *p = static_cast<const uint16_t *>(w.data) + begin;
    for (int64_t i = 0; i < count; ++i)
      out[i] = f16ToFloat(p[i]);
    return;
  }
  default:
    unsupportedType("load", w.type);
  }
}

} // namespace

size_t elementSize(ElementType type) {
  switch (type) {
  case ElementType::F32:
  case ElementType::I32:
    return 4;
  case ElementType::BF16:
  case ElementType::F16:
    return 2;
  case ElementType::F8E4M3:
    return 1;
  }
  return 4;
}

float loadWeight(Weight w, int64_t index) {
  switch (w.type) {
  case ElementType::F32:
    return static_cast<const float *>(w.data)[index];
  case ElementType::BF16:
    return bf16ToFloat(static_cast<const uint16_t *>(w.data)[index]);
  case ElementType::F16:
    return f16ToFloat(static_cast<const uint16_t *>(w.data)[index]);
  case ElementType::F8E4M3:
    if (!w.scale)
      return e4m3ToFloat(static_cast<const uint8_t *>(w.data)[index]);
    unsupportedType("loadWeight", w.type);
  default:
    unsupportedType("loadWeight", w.type);
  }
}

void setVectorKernels(bool enabled) { vectorEnabled.store(enabled); }

bool vectorKernelsActive() { return vectorEnabled.load() && cpuHasAvx2(); }

void setAvx512Kernels(bool enabled) { avx512Enabled.store(enabled); }

bool avx512KernelsActive() {
  return vectorKernelsActive() && avx512Enabled.load() && cpuHasAvx512vl();
}

void embedding(const int32_t *tokens, int64_t count, Weight table, int64_t dim,
               float *out) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < count; ++t)
    loadRow(table, static_cast<int64_t>(tokens[t]) * dim, dim, out + t * dim);
}

void rmsNorm(const float *x, int64_t rows, int64_t dim, Weight weight,
             float eps, float *out) {
  // As HF: fp32 mean of squares, x * rsqrt(mean + eps), then * weight.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * dim;
    float *yr = out + r * dim;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < dim; ++i)
      sum += xr[i] * xr[i];
    float inv = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
    loadRow(weight, 0, dim, yr); // the weight, then scaled in place
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i)
      yr[i] = (xr[i] * inv) * yr[i];
  }
}

void add(const float *a, const float *b, int64_t count, float *out) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i)
    out[i] = a[i] + b[i];
}

void swiglu(const float *gate, const float *up, int64_t count, float *out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void slice(const float *x, int64_t rows, int64_t inDim, int64_t offset,
           int64_t size, float *out) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out + r * size, x + r * inDim + offset,
                static_cast<size_t>(size) * sizeof(float));
}

void concat(const float *const *inputs, const int64_t *dims, int64_t count,
            int64_t rows, float *out) {
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i)
    total += dims[i];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float *dst = out + r * total;
    for (int64_t i = 0; i < count; ++i) {
      std::memcpy(dst, inputs[i] + r * dims[i],
                  static_cast<size_t>(dims[i]) * sizeof(float));
      dst += dims[i];
    }
  }
}

void broadcast(const float *x, int64_t rows, int64_t repeat, int64_t inner,
               float *out) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < repeat; ++j)
      std::memcpy(out + (r * repeat + j) * inner, x + r * inner,
                  static_cast<size_t>(inner) * sizeof(float));
}

} // namespace kiln::cpu
