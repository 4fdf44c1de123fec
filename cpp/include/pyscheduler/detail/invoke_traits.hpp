// How the wrapper calls user callables with stored arguments: as rvalues when the
// callable accepts them (by value, const&, && all work, move-only types included), else
// as lvalues (for callables taking T&), as std::thread and std::apply would.
#ifndef PYSCHEDULER_DETAIL_INVOKE_TRAITS_HPP
#define PYSCHEDULER_DETAIL_INVOKE_TRAITS_HPP

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pyscheduler::pysched_detail {

template <typename F, typename... Stored>
inline constexpr bool invocable_with_stored_v =
    std::is_invocable_v<F, Stored&&...> || std::is_invocable_v<F, Stored&...>;

template <typename F, typename... Stored>
struct stored_invoke_result {
  using type = typename std::conditional_t<std::is_invocable_v<F, Stored&&...>, std::invoke_result<F, Stored&&...>,
                                           std::invoke_result<F, Stored&...>>::type;
};

/// The result of calling `F` with stored arguments of types `Stored...`.
template <typename F, typename... Stored>
using stored_invoke_result_t = typename stored_invoke_result<F, Stored...>::type;

/// Calls `f` with the elements of `stored`, moving them out when `f` accepts rvalues.
template <typename F, typename... Stored>
decltype(auto) invoke_with_stored(F&& f, std::tuple<Stored...>& stored) {
  return std::apply(
      [&f](Stored&... a) -> decltype(auto) {
        if constexpr (std::is_invocable_v<F, Stored&&...>) {
          return std::invoke(std::forward<F>(f), std::move(a)...);
        } else {
          return std::invoke(std::forward<F>(f), a...);
        }
      },
      stored);
}

}  // namespace pyscheduler::pysched_detail

#endif  // PYSCHEDULER_DETAIL_INVOKE_TRAITS_HPP
