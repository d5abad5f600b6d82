// A borrowed callable, for callbacks that run before the call that takes them
// returns: unlike std::function it never copies the callable onto the heap.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace kldiv::runtime {

template<typename Signature>
class FunctionRef;

template<typename R, typename... Args>
class FunctionRef<R(Args...)> {
public:
    template<typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
    FunctionRef(F &&f)
        : callable_(const_cast<void *>(static_cast<const void *>(std::addressof(f)))),
          call_([](void *callable, Args... args) -> R {
              return (*static_cast<std::remove_reference_t<F> *>(callable))(std::forward<Args>(args)...);
          }) {}

    R operator()(Args... args) const { return call_(callable_, std::forward<Args>(args)...); }

private:
    void *callable_;
    R (*call_)(void *, Args...);
};

}  // namespace kldiv::runtime
