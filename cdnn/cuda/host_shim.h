// kernels.cu as plain C++: a launch runs its grid's threads one after another on the calling CPU
// thread, so the kernels' logic (not their speed) can be tested where there is no GPU. This is
// valid for kernels without shared memory, barriers, atomics or warp intrinsics, which is how
// kernels.cu is written. Arguments come as CUDA's driver API passes them (cuLaunchKernel's
// kernelParams): an array of pointers to each argument's value.
#pragma once
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>

using std::erf; using std::exp; using std::log; using std::log1p; using std::pow;
using std::sqrt; using std::tanh;

struct cdnn_dim3 { unsigned x, y, z; };
static thread_local cdnn_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__

// One character per parameter type, so that a caller's arguments can be checked against the
// kernel's signature (a float passed where a double is read would go unnoticed otherwise, on
// the GPU too): pointers by what they point to, in capitals.
template <typename A> constexpr char type_code() {
    using T = std::remove_cv_t<std::remove_pointer_t<A>>;
    constexpr bool ptr = std::is_pointer_v<A>;
    if constexpr (std::is_same_v<T, float>) return ptr ? 'F' : 'f';
    else if constexpr (std::is_same_v<T, double>) return ptr ? 'D' : 'd';
    else if constexpr (std::is_same_v<T, int>) return ptr ? 'I' : 'i';
    else if constexpr (std::is_same_v<T, long long>) return ptr ? 'L' : 'l';
    else if constexpr (std::is_same_v<T, unsigned long long>) return ptr ? 'U' : 'u';
    else return '?';
}

template <typename... A> const char* signature_of(void (*)(A...)) {
    static const char codes[] = {type_code<A>()..., '\0'};
    return codes;
}

template <typename... A, std::size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

// every thread of the grid (x, y, z; blocks outermost), one after another
template <typename... A>
void run_grid(void (*kernel)(A...), const unsigned* grid, const unsigned* block, void** args) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
    for (unsigned by = 0; by < grid[1]; ++by)
    for (unsigned bx = 0; bx < grid[0]; ++bx)
    for (unsigned tz = 0; tz < block[2]; ++tz)
    for (unsigned ty = 0; ty < block[1]; ++ty)
    for (unsigned tx = 0; tx < block[0]; ++tx) {
        blockIdx = {bx, by, bz};
        threadIdx = {tx, ty, tz};
        call_with(kernel, args, std::index_sequence_for<A...>{});
    }
}

struct cdnn_entry {
    const char* name;           // as NVRTC's name expression: "gather_rows<float>"
    const char* signature;      // type_code per parameter
    void (*launch)(const unsigned* grid, const unsigned* block, void** args);
};

#define CDNN_HOST_ENTRY(...) \
    {#__VA_ARGS__, signature_of(&__VA_ARGS__), \
     [](const unsigned* g, const unsigned* b, void** a) { run_grid(&__VA_ARGS__, g, b, a); }}
