// Tensors as the dispatcher reads them: borrowed sizes and strides (a
// kldiv_tensor's arrays or a kldiv::Tensor's vectors), and shapes held inline
// up to KLDIV_MAX_RANK, so that a loss call puts nothing on the heap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "errors.h"
#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"

namespace kldiv::runtime {

// A borrowed run of `size()` values (C++17 has no std::span).
template<typename T>
class Span {
public:
    Span() = default;
    Span(T *data, size_t size) : data_(data), size_(size) {}
    template<typename U, typename = std::enable_if_t<std::is_same_v<const U, T>>>
    Span(const std::vector<U> &values) : data_(values.data()), size_(values.size()) {}
    template<typename U, typename = std::enable_if_t<std::is_same_v<U, std::remove_const_t<T>>>>
    Span(std::vector<U> &values) : data_(values.data()), size_(values.size()) {}
    // For a braced argument list: valid until the end of the full expression
    // that makes it, so never kept beyond the call it is given to.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winit-list-lifetime"
#endif
    Span(std::initializer_list<std::remove_const_t<T>> values) : data_(values.begin()), size_(values.size()) {}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

    T *data() const { return data_; }
    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    T *begin() const { return data_; }
    T *end() const { return data_ + size_; }
    T &operator[](size_t i) const { return data_[i]; }
    T &front() const { return data_[0]; }
    T &back() const { return data_[size_ - 1]; }

private:
    T *data_ = nullptr;
    size_t size_ = 0;
};

using Extents = Span<const int64_t>;  // sizes or strides of one tensor

inline bool operator==(Extents a, Extents b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++) {
        if (a[i] != b[i]) return false;
    }
    return true;
}
inline bool operator!=(Extents a, Extents b) { return !(a == b); }

// Up to N values held in place; more is a logic error the callers rule out
// first (a tensor's rank is checked against KLDIV_MAX_RANK before any shape
// is built from it).
template<typename T, size_t N>
class InlineVector {
public:
    InlineVector() = default;
    InlineVector(size_t size, const T &value) { assign(size, value); }
    InlineVector(std::initializer_list<T> values) {
        for (const T &v : values) push_back(v);
    }
    explicit InlineVector(Span<const T> values) {
        for (const T &v : values) push_back(v);
    }
    InlineVector(const InlineVector &other) : size_(other.size_) { copy_from(other); }
    InlineVector &operator=(const InlineVector &other) {
        size_ = other.size_;
        copy_from(other);
        return *this;
    }

    void push_back(const T &value) {
        if (size_ == N) fail(ErrorCode::Internal, "InlineVector: more than its capacity");
        values_[size_++] = value;
    }
    void assign(size_t size, const T &value) {
        if (size > N) fail(ErrorCode::Internal, "InlineVector: more than its capacity");
        size_ = size;
        for (size_t i = 0; i < size; i++) values_[i] = value;
    }
    void clear() { size_ = 0; }
    // A new last value, left for the caller to set.
    T &grow() {
        if (size_ == N) fail(ErrorCode::Internal, "InlineVector: more than its capacity");
        return values_[size_++];
    }

    T *data() { return values_; }
    const T *data() const { return values_; }
    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    T *begin() { return values_; }
    T *end() { return values_ + size_; }
    const T *begin() const { return values_; }
    const T *end() const { return values_ + size_; }
    T &operator[](size_t i) { return values_[i]; }
    const T &operator[](size_t i) const { return values_[i]; }
    T &back() { return values_[size_ - 1]; }
    const T &back() const { return values_[size_ - 1]; }

    operator Span<const T>() const { return {values_, size_}; }
    operator Span<T>() { return {values_, size_}; }

private:
    void copy_from(const InlineVector &other) {
        for (size_t i = 0; i < size_; i++) values_[i] = other.values_[i];
    }

    T values_[N];  // only the first size_ are set
    size_t size_ = 0;
};

// A shape, or strides in one: as many dimensions as a tensor may have.
using Dims = InlineVector<int64_t, KLDIV_MAX_RANK>;

// A strided view of memory, as kldiv::Tensor, with borrowed sizes and
// strides. The two may differ in length only until check_tensor has run.
struct TensorView {
    void *data = nullptr;
    DType dtype = DType::Float32;
    Extents sizes;
    Extents strides;
    Device device = Device::CPU;

    TensorView() = default;
    TensorView(void *data, DType dtype, Extents sizes, Extents strides, Device device)
        : data(data), dtype(dtype), sizes(sizes), strides(strides), device(device) {}
    // Borrows the tensor's vectors: the view lives no longer than the tensor.
    TensorView(const Tensor &t) : TensorView(t.data, t.dtype, t.sizes, t.strides, t.device) {}

    int rank() const { return (int)sizes.size(); }
    int64_t numel() const {
        int64_t n = 1;
        for (int64_t s : sizes) n *= s;
        return n;
    }
};

// The same view with its own copies of sizes and strides (for the few paths
// that keep views beyond the call's arguments).
inline Tensor owned(const TensorView &view) {
    Tensor t;
    t.data = view.data;
    t.dtype = view.dtype;
    t.sizes.assign(view.sizes.begin(), view.sizes.end());
    t.strides.assign(view.strides.begin(), view.strides.end());
    t.device = view.device;
    return t;
}

// A tensor with the name errors give it.
struct NamedView {
    const TensorView *tensor;
    const char *name;
};
using NamedViews = Span<const NamedView>;

}  // namespace kldiv::runtime
