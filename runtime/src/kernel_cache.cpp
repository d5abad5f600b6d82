#include "kernel_cache.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <variant>

#include "aot_registry.h"
#include "codegen_fingerprint.h"
#include "cpu_level.h"
#include "cuda_device.h"
#include "disk_cache.h"
#include "errors.h"
#include "jit/compile.h"
#include "jit/orc.h"
#include "kernel_args.h"
#include "kldiv/schedules/tuning_db.h"

namespace kldiv::runtime {

using codegen::KernelSpec;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---- keys ------------------------------------------------------------------

constexpr int kMaxBuffers = 5;  // backward with a per-element grad_output and both gradients

// A kernel's identity within one runtime (whose target is fixed): the spec,
// and for a specialised kernel the extents and every buffer's strides; for
// a JIT-compiled generic one, whether dimension 0 has unit stride.
struct Key {
    uint32_t spec = 0;
    bool fixed = false;
    codegen::InnerStride inner = codegen::InnerStride::Any;
    std::array<int32_t, 4 + 4 * kMaxBuffers> dims{};

    bool operator==(const Key &o) const {
        return spec == o.spec && fixed == o.fixed && inner == o.inner && dims == o.dims;
    }
};

// Every call hashes its shape's key (Specialize::Auto counts the calls of
// each shape): the words are multiplied independently, not in one chain.
struct KeyHash {
    size_t operator()(const Key &k) const {
        uint64_t words[(4 + 4 * kMaxBuffers) / 2];
        static_assert(sizeof words == sizeof k.dims);
        std::memcpy(words, k.dims.data(), sizeof words);
        uint64_t h = (uint64_t(k.spec) << 3 | uint64_t(k.inner) << 1 | uint64_t(k.fixed)) * 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < std::size(words); i++) {
            h += (words[i] ^ (i * 0x632be59bd9b4e019ull)) * 0xff51afd7ed558ccdull;
        }
        return h ^ (h >> 29);
    }
};

uint32_t pack(const KernelSpec &s) { return codegen::index_of(s); }

// Distillation specs: the top bit set, so that they never meet a loss spec.
uint32_t pack(const codegen::DistillSpec &s) { return 1u << 31 | codegen::index_of(s); }

// The generic kernel the JIT compiles for `piece`: one for unit inner strides
// in every buffer (the piece has strides for each 4-d buffer), one for the rest.
codegen::InnerStride jit_inner_stride(const Piece &piece) {
    bool unit = true;
    for (const auto &stride : piece.stride) unit = unit && stride[0] == 1;
    return unit ? codegen::InnerStride::Unit : codegen::InnerStride::Strided;
}

Key fixed_key(uint32_t packed_spec, const Piece &piece) {
    Key k;
    k.spec = packed_spec;
    k.fixed = true;
    std::copy(piece.extent, piece.extent + 4, k.dims.begin());
    for (size_t b = 0; b < piece.stride.size() && b < kMaxBuffers; b++) {
        std::copy(piece.stride[b].begin(), piece.stride[b].end(), k.dims.begin() + 4 + 4 * b);
    }
    return k;
}

// The buffer arguments a call's piece has strides for (the 4-d ones).
size_t buffer_count(const KernelSpec &spec) { return argument_layout(spec).four_d; }

std::optional<jit::FixedShape> shape_of(const Key &key, size_t buffers) {
    if (!key.fixed) return std::nullopt;
    jit::FixedShape shape;
    std::copy(key.dims.begin(), key.dims.begin() + 4, shape.extent.begin());
    for (size_t b = 0; b < buffers; b++) {
        std::array<int32_t, 4> s;
        std::copy(key.dims.begin() + 4 + 4 * b, key.dims.begin() + 8 + 4 * b, s.begin());
        shape.strides.push_back(s);
    }
    return shape;
}

std::string shape_text(const jit::FixedShape &shape) {
    std::string text = "extent";
    for (int32_t e : shape.extent) text += " " + std::to_string(e);
    for (const auto &strides : shape.strides) {
        text += " stride";
        for (int32_t s : strides) text += " " + std::to_string(s);
    }
    return text;
}

// The shape part of a kernel's disk key and description.
std::string layout_text(const std::optional<jit::FixedShape> &shape, codegen::InnerStride inner) {
    if (shape) return shape_text(*shape);
    return inner == codegen::InnerStride::Unit      ? "generic unit-stride"
           : inner == codegen::InnerStride::Strided ? "generic strided"
                                                    : "generic";
}

// A distillation kernel's layout text: its vocabulary when fixed, and the
// stride of dimension 0.
std::string distill_layout_text(const Key &key) {
    const std::string inner = key.inner == codegen::InnerStride::Unit ? "unit-stride" : "strided";
    return key.fixed ? "vocab " + std::to_string(key.dims[0]) + " " + inner : "generic " + inner;
}

Specialize specialize_policy(const RuntimeOptions &options, std::string &problem) {
    if (options.specialize) return *options.specialize;
    const char *env = std::getenv("KLDIV_SPECIALIZE");
    if (env == nullptr || *env == '\0') return Specialize::Auto;
    try {
        return parse_specialize(env);
    } catch (const Error &e) {
        problem = std::string("KLDIV_SPECIALIZE: ") + e.what() + "; using 'auto'";
        return Specialize::Auto;
    }
}

// Halide's compiler is used by one thread at a time.
std::mutex &compile_mutex() {
    static std::mutex m;
    return m;
}

}  // namespace

// ---- state -------------------------------------------------------------------

struct KernelCache::State {
    enum class Status { Compiling, Ready, Failed };
    struct Slot {
        Status status = Status::Compiling;
        std::shared_ptr<jit::LoadedKernel> code;
        std::string schedule;  // where its schedule parameters came from
        CompileTimes compile;  // when this slot compiled it
        std::string error;
        std::list<Key>::iterator lru;
    };

    RuntimeOptions options;
    Specialize specialize = Specialize::Auto;
    bool cuda_jit = false;
    std::string target;
    std::string cuda_target;  // of JIT-compiled CUDA kernels: the CPU part plain x86-64, like the AOT ones
    bool host_target = true;
    schedules::TuningDb tuning;  // the user's database, then the shipped one
    std::string version;  // part of every disk key
    std::unique_ptr<cache::DiskCache> disk;

    mutable std::mutex mutex;
    std::condition_variable changed;
    std::unordered_map<Key, std::shared_ptr<Slot>, KeyHash> slots;
    std::list<Key> lru;  // most recently used first; Ready slots only
    struct Seen {
        int calls = 0;
        uint64_t elements = 0;
    };
    std::unordered_map<Key, Seen, KeyHash> seen;  // per shape, for Specialize::Auto
    uint64_t seen_generation = 0;  // counts seen.clear(), which drops its records
    const uint64_t id = next_id();  // this cache's, unlike its address never reused

    static uint64_t next_id() {
        static std::atomic<uint64_t> next{1};
        return next++;
    }

    // The Seen record of shape `key`, under `mutex`.
    Seen &seen_record(const Key &key);
    CacheStats stats;
    std::vector<std::thread> background;

    void warn(const std::string &message) const { runtime::warn(options.warning_handler, message); }

    // A kernel the cache is asked for, loss or distillation, and the keys of
    // its forms for the call. Made on every call: what it takes to name,
    // describe or compile a kernel is derived from the spec when needed.
    struct Request {
        KernelName spec;
        bool cuda = false;
        bool reduces = false;     // sums in an order the schedule sets (loss reductions)
        int (*aot)(void **) = nullptr;
        uint32_t packed = 0;      // the spec's number in keys
        codegen::InnerStride inner = codegen::InnerStride::Any;  // of the JIT's generic kernel for the call
        Key fixed;                // with the call's shape
        uint64_t elements = 0;    // in the call, for Specialize::Auto

        // The spec alone: the AOT kernel's key.
        Key generic() const {
            Key k;
            k.spec = packed;
            return k;
        }
        // The JIT's generic kernel for the call.
        Key jit_generic() const {
            Key k = generic();
            k.inner = inner;
            return k;
        }
        const KernelSpec *loss() const { return std::get_if<KernelSpec>(&spec); }
        std::string name() const { return name_of(spec); }
        std::string tuning_name() const {
            return std::visit([](const auto &s) { return s.tuning_name(); }, spec);
        }
        // The tuning bucket of a kernel's key, and what it counts.
        int bucket(const Key &key) const {
            if (!loss()) return key.fixed ? schedules::size_bucket(key.dims[0]) : schedules::kDistillGenericBucket;
            const std::optional<jit::FixedShape> shape = shape_of(key, buffer_count(*loss()));
            if (!shape) return schedules::kGenericBucket;
            int64_t elements = 1;
            for (int32_t e : shape->extent) elements *= e;
            return schedules::size_bucket(elements);
        }
        const char *bucket_of() const { return loss() ? "elements" : "logits a row"; }
        // The key's shape part, for disk keys and messages.
        std::string layout(const Key &key) const {
            if (!loss()) return distill_layout_text(key);
            return layout_text(shape_of(key, buffer_count(*loss())), key.inner);
        }
        // Records the calling thread's kernel for last_kernel().
        void remember(const Key &key, KernelOrigin origin, double seconds, const std::string &schedule,
                      const CompileTimes &compile) const {
            remember_kernel(spec, key.fixed ? key.dims.data() : nullptr, loss() ? 4 : 1, origin, seconds, schedule,
                            compile);
        }
    };

    // Compiles the kernel of `key` with `params` as `function`.
    std::string compile_kernel(const Request &r, const Key &key, const schedules::Params &params,
                               const std::string &function, CompileTimes *times) const {
        if (const KernelSpec *spec = r.loss()) {
            return jit::compile_kernel(*spec, shape_of(key, buffer_count(*spec)), target_for(spec->cuda), params,
                                       function, "", key.inner, times);
        }
        const std::optional<int32_t> vocab = key.fixed ? std::optional<int32_t>(key.dims[0]) : std::nullopt;
        return jit::compile_distill_kernel(std::get<codegen::DistillSpec>(r.spec), vocab, key.inner, target, params,
                                           function, times);
    }

    const std::string &target_for(bool cuda) const { return cuda ? cuda_target : target; }

    std::string disk_key(const Request &r, const Key &key, const schedules::Params &params) const {
        return "kernel " + r.name() + " " + r.layout(key) + " | target " + target_for(r.cuda) + " | schedule " +
               schedules::to_string(params) + " | " + version;
    }

    struct Schedule {
        schedules::Params params;
        std::string source;     // for last_kernel(): default, or which record
        bool reorders = false;  // sums in another order than the default (and the AOT kernels)
    };

    // The tuned parameters for the kernel (nearest compatible target, nearest
    // size bucket), else the defaults. Every call of a shape must get the same
    // result, so a record's summation order applies only where specialised
    // kernels serve all of a shape's calls: Specialize::Always, in blocking
    // mode. Elsewhere (generic kernels, `auto`, non-blocking runtimes) AOT or
    // generic kernels serve some calls, so the default order is kept and the
    // rest of the record taken. (`kldiv tune` does not change the order.)
    Schedule schedule_for(const Request &r, const Key &key) const {
        const std::string &target = target_for(r.cuda);
        const schedules::Params defaults = schedules::default_params(target);
        const int bucket = r.bucket(key);
        const auto match = tuning.find(target, r.tuning_name(), bucket);
        if (!match) return {defaults, "default", false};
        Schedule s{match->record.params, "", false};
        std::string kept;
        if (r.reduces && !schedules::same_summation_order(s.params, defaults)) {
            if (key.fixed && options.blocking && specialize == Specialize::Always) {
                s.reorders = true;
            } else {
                s.params = schedules::with_summation_order(s.params, defaults);
                kept = "; default summation order";
            }
        }
        char speedup[32];
        std::snprintf(speedup, sizeof speedup, "%.2fx", match->record.speedup());
        s.source = "tuned (" + match->source + ", 2^" + std::to_string(match->record.bucket) + " " + r.bucket_of() +
                   ", " + speedup + " the default there" + kept + "; record for " + match->why + ")";
        return s;
    }

    std::string description(const Request &r, const Key &key) const {
        return r.name() + " [" + r.layout(key) + "] " + target_for(r.cuda);
    }

    void load_runtime(const std::string &target) {
        jit::ensure_runtime(target, [&] {
            const std::string key = "halide-runtime | target " + target + " | " + version;
            if (auto object = disk->load(key)) return *object;
            std::lock_guard<std::mutex> lock(compile_mutex());
            std::string object = jit::compile_runtime(target);
            disk->store(key, object, "Halide runtime " + target);
            return object;
        });
    }

    // Loads the kernel for `key` from the disk cache, or compiles and stores it.
    std::shared_ptr<jit::LoadedKernel> produce(const Request &r, const Key &key, KernelOrigin &origin,
                                               std::string &schedule, CompileTimes &compile) {
        const std::string &target = target_for(r.cuda);
        load_runtime(target);
        const auto [params, source, reorders] = schedule_for(r, key);
        (void)reorders;
        schedule = source;
        const std::string text = disk_key(r, key, params);
        const std::string function = "kldiv_jit_" + cache::hash_key(text).substr(0, 16);
        if (std::optional<std::string> object = disk->load(text)) {
            try {
                std::shared_ptr<jit::LoadedKernel> code = jit::load_kernel(target, *object, function);
                origin = KernelOrigin::Disk;
                std::lock_guard<std::mutex> lock(mutex);
                stats.disk_hits++;
                return code;
            } catch (const Error &e) {
                warn(std::string("kldiv: kernel cache entry for ") + description(r, key) +
                     " could not be loaded (" + e.what() + "); rebuilding it");
            }
        }
        origin = KernelOrigin::Compiled;
        const auto start = Clock::now();
        std::string object;
        {
            std::lock_guard<std::mutex> lock(compile_mutex());
            object = compile_kernel(r, key, params, function, &compile);
        }
        {
            std::lock_guard<std::mutex> lock(mutex);
            stats.compiles++;
            stats.compile_seconds += seconds_since(start);
        }
        disk->store(text, object, description(r, key));
        const auto load_start = Clock::now();
        std::shared_ptr<jit::LoadedKernel> code = jit::load_kernel(target, object, function);
        compile.load = seconds_since(load_start);
        return code;
    }

    // Under `lock`: the slot for `key` is done; evicts beyond the bounds.
    void finish(const Key &key, Slot &slot) {
        slot.status = Status::Ready;
        lru.push_front(key);
        slot.lru = lru.begin();
        stats.entries++;
        stats.code_bytes += slot.code->code_bytes;
        while (lru.size() > 1 &&
               (stats.entries > options.memory_cache_entries || stats.code_bytes > options.memory_cache_bytes)) {
            auto victim = slots.find(lru.back());
            stats.entries--;
            stats.code_bytes -= victim->second->code->code_bytes;
            stats.evictions++;
            slots.erase(victim);
            lru.pop_back();
        }
        changed.notify_all();
    }

    void fail_slot(const Key &key, Slot &slot, const std::string &error) {
        slot.status = Status::Failed;
        slot.error = error;
        stats.failures++;
        slots.erase(key);  // a later call tries again
        changed.notify_all();
    }

    // Runs produce() for a new slot and publishes the result; throws on failure.
    void fill(const Request &r, const Key &key, const std::shared_ptr<Slot> &slot, KernelOrigin &origin) {
        try {
            std::string schedule;
            CompileTimes compile;
            std::shared_ptr<jit::LoadedKernel> code = produce(r, key, origin, schedule, compile);
            std::lock_guard<std::mutex> lock(mutex);
            slot->code = std::move(code);
            slot->schedule = std::move(schedule);
            slot->compile = compile;
            finish(key, *slot);
        } catch (const Error &e) {
            std::lock_guard<std::mutex> lock(mutex);
            fail_slot(key, *slot, e.what());
            throw;
        } catch (const std::bad_alloc &) {
            std::lock_guard<std::mutex> lock(mutex);
            const std::string message = "out of memory while preparing kernel " + r.name();
            fail_slot(key, *slot, message);
            fail(ErrorCode::Internal, message);
        }
    }

    KernelCall get(const Request &r);
};

KernelCache::KernelCache(const RuntimeOptions &options) : state_(std::make_unique<State>()) {
    install_runtime_hooks();
    State &s = *state_;
    s.options = options;
    s.options.memory_cache_entries = std::max<size_t>(1, options.memory_cache_entries);
    std::string problem;
    s.specialize = specialize_policy(options, problem);
    if (!problem.empty()) s.warn(problem);
    if (options.cuda_jit) {
        s.cuda_jit = *options.cuda_jit;
    } else if (const char *env = std::getenv("KLDIV_CUDA_JIT"); env && *env) {
        const std::string value = env;
        if (value != "on" && value != "off") s.warn("KLDIV_CUDA_JIT: '" + value + "' is not on or off; using off");
        s.cuda_jit = value == "on";
    }
    if (!options.cpu_target.empty() && !is_cpu_level(options.cpu_target)) {
        fail(ErrorCode::InvalidArgument,
             "cpu_target '" + options.cpu_target + "' is not one of sse41, avx2, avx512 (or empty)");
    }
    if (std::string problem = cpu_level_cap_problem(); !problem.empty()) s.warn(problem);
    const std::string cpu_level = options.cpu_target.empty() ? cpu_level_cap() : options.cpu_target;
    s.target = jit::resolve_target(options.target, cpu_level);
    try {
        s.cuda_target = jit::resolve_target(KLDIV_CUDA_JIT_TARGET, "", true);
    } catch (const Error &) {
        s.cuda_jit = false;  // another host architecture: CUDA calls run the AOT kernels
    }
    // The AOT kernels serve this runtime when they run the same code: the host
    // target at the level they dispatch to, or that level's own target.
    const bool host = options.target.empty() || options.target == "host";
    const std::string aot_target = jit::resolve_target(cpu_target());
    s.host_target = host ? schedules::isa_class(s.target) == schedules::isa_class(aot_target) : s.target == aot_target;
    s.version = std::string("kldiv ") + KLDIV_VERSION + " codegen " + std::string(KLDIV_CODEGEN_FINGERPRINT).substr(0, 16) +
                " " + jit::toolchain_version();
    s.disk = std::make_unique<cache::DiskCache>(cache::resolve_cache_dir(options.cache_dir), options.disk_cache_bytes,
                                                s.version, [&s](const std::string &m) { s.warn(m); });
    // The user's tuning records live beside the kernels: a refused directory is not read.
    const std::string tuning_dir = s.disk->refusal().empty() ? s.disk->dir() : std::string();
    s.tuning = schedules::load_tuning_databases(options.tuning_db, tuning_dir,
                                                [&s](const std::string &m) { s.warn(m); });
    if (options.threads > 0) set_num_threads(options.threads);
    set_cuda_stream(options.cuda_stream);
}

KernelCache::~KernelCache() {
    for (std::thread &t : state_->background) t.join();
}

namespace {

// The Seen record a thread found last, and where: callers mostly repeat a
// shape, and finding it by hash (a division among them) took some 40 ns of a
// 16-element call. Read and written by its thread alone; the record itself
// only under its cache's mutex.
struct SeenMemo {
    uint64_t cache = 0;  // State::id; 0: none
    uint64_t generation = 0;
    Key key;
    void *record = nullptr;
};
thread_local SeenMemo seen_memo;

}  // namespace

KernelCache::State::Seen &KernelCache::State::seen_record(const Key &key) {
    SeenMemo &memo = seen_memo;
    if (memo.cache == id && memo.generation == seen_generation && memo.key == key) {
        return *static_cast<Seen *>(memo.record);
    }
    if (seen.size() > 4096) {
        seen.clear();
        seen_generation++;
    }
    Seen &record = seen[key];  // unordered_map nodes stay where they are until erased
    memo = {id, seen_generation, key, &record};
    return record;
}

// The kernel a request asks for: AOT, or JIT (generic or fixed to the call's
// shape) as the options decide. Compiles at most once per key however many
// threads ask.
KernelCall KernelCache::State::get(const Request &r) {
    State &s = *this;
    // An AOT kernel is a table entry, found in no time worth two clock reads
    // (some 80 ns on this 2-core VM, a sixth of a small call): it reports 0
    // seconds, as the AOT-only build's kernels always have.
    auto aot = [&] {
        if (r.aot == nullptr) fail(ErrorCode::Internal, "no kernel " + r.name() + " in this build");
        remember_aot_kernel(r.spec);
        KernelCall call{r.aot, false, nullptr};
        if (r.cuda) call.buffers = cuda::library_buffer_functions();
        return call;
    };
    // A JIT kernel, with its runtime's buffer functions for CUDA.
    auto jit_call = [&](const std::shared_ptr<jit::LoadedKernel> &code) {
        return KernelCall{code->entry, true, code, code->buffers};
    };
    const bool aot_available = (s.host_target || r.cuda) && r.aot != nullptr;
    if (!s.options.jit || (r.cuda && !s.cuda_jit)) {
        std::lock_guard<std::mutex> lock(s.mutex);
        s.stats.aot_calls++;
        return aot();
    }

    std::unique_lock<std::mutex> lock(s.mutex);
    bool specialise = s.specialize == Specialize::Always;
    if (s.specialize == Specialize::Auto) {
        if (s.slots.count(r.fixed)) {
            specialise = true;
        } else {
            // A compile (0.1-0.3 s) pays only where the shape's calls have
            // already taken several times as long: specialise once they
            // have covered specialize_work elements in all.
            State::Seen &seen = s.seen_record(r.fixed);
            seen.calls++;
            seen.elements += r.elements;
            specialise = seen.calls >= s.options.specialize_after && seen.elements >= s.options.specialize_work;
        }
    }
    if (!specialise && s.options.generic_from_aot && aot_available) {
        s.stats.aot_calls++;
        return aot();
    }
    const Key key = specialise ? r.fixed : r.jit_generic();
    const auto start = Clock::now();  // what a JIT kernel's seconds count: waiting, loading, compiling

    auto found = s.slots.find(key);
    if (found != s.slots.end()) {
        std::shared_ptr<State::Slot> slot = found->second;
        if (slot->status == State::Status::Compiling && !s.options.blocking && aot_available) {
            s.stats.aot_calls++;
            return aot();
        }
        s.changed.wait(lock, [&] { return slot->status != State::Status::Compiling; });
        if (slot->status == State::Status::Failed) fail(ErrorCode::Internal, slot->error);
        s.stats.hits++;
        auto current = s.slots.find(key);  // it may have been evicted while this thread waited
        if (current != s.slots.end() && current->second == slot) s.lru.splice(s.lru.begin(), s.lru, slot->lru);
        r.remember(key, KernelOrigin::Memory, seconds_since(start), slot->schedule, {});
        return jit_call(slot->code);
    }

    s.stats.misses++;
    auto slot = std::make_shared<State::Slot>();
    s.slots.emplace(key, slot);
    if (!s.options.blocking && aot_available) {
        s.background.emplace_back([&s, r, key, slot] {
            KernelOrigin origin;
            try {
                s.fill(r, key, slot, origin);
            } catch (const Error &e) {
                s.warn(std::string("kldiv: background compile failed: ") + e.what());
            }
        });
        s.stats.aot_calls++;
        return aot();
    }
    lock.unlock();
    KernelOrigin origin = KernelOrigin::Compiled;
    s.fill(r, key, slot, origin);
    r.remember(key, origin, seconds_since(start), slot->schedule,
               origin == KernelOrigin::Compiled ? slot->compile : CompileTimes{});
    return jit_call(slot->code);
}

KernelCall KernelCache::kernel(const KernelSpec &spec, const Piece &piece) {
    // The keys only: names, descriptions and functions are made from the
    // spec where a kernel is compiled, loaded or reported.
    const uint32_t packed = pack(spec);  // a loss spec's index_of, which also finds its AOT kernel
    const uint64_t elements = (uint64_t)piece.extent[0] * piece.extent[1] * piece.extent[2] * piece.extent[3];
    const State::Request r{spec,
                           spec.cuda,
                           /*reduces=*/spec.reduce && spec.pass != codegen::Pass::Backward,
                           aot_entry(spec, packed),
                           packed,
                           jit_inner_stride(piece),
                           fixed_key(packed, piece),
                           elements};
    return state_->get(r);
}

KernelCall KernelCache::distill_kernel(const codegen::DistillSpec &spec, int32_t vocab, bool unit_stride,
                                       uint64_t elements) {
    State &s = *state_;
    if (spec.cuda) {
        // The library's CUDA kernels: distill.cpp gives them device buffers
        // wrapped by the library's CUDA runtime, not a JIT kernel's.
        KernelCall call{aot_entry(spec), false, nullptr, cuda::library_buffer_functions()};
        if (call.entry == nullptr) fail(ErrorCode::Internal, "no kernel " + spec.name() + " in this build");
        std::lock_guard<std::mutex> lock(s.mutex);
        s.stats.aot_calls++;
        remember_aot_kernel(spec);
        return call;
    }
    State::Request r;
    r.spec = spec;
    r.aot = aot_entry(spec);
    r.packed = pack(spec);
    r.inner = unit_stride ? codegen::InnerStride::Unit : codegen::InnerStride::Strided;
    r.fixed = r.jit_generic();
    r.fixed.fixed = true;
    r.fixed.dims[0] = vocab;
    r.elements = elements;
    return s.get(r);
}

CacheStats KernelCache::stats() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    CacheStats stats = state_->stats;
    return stats;
}

const std::string &KernelCache::target() const { return state_->target; }
const std::string &KernelCache::cache_dir() const { return state_->disk->dir(); }
void KernelCache::warn(const std::string &message) const { state_->warn(message); }

}  // namespace kldiv::runtime
