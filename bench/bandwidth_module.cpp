// kldiv_bandwidth: the memory-bandwidth ceiling of tools/bandwidth.h for the
// Python benchmarks, measured in their own process and with their threads, as
// the C++ benchmarks measure it (PyTorch's own streaming operators reach
// less than half of it on some machines, which made them a loose ceiling).
//
//   import kldiv_bandwidth; kldiv_bandwidth.measure(threads, runs)
//   -> {'read_gbps': ..., 'copy_gbps': ..., 'threads': ..., 'array_bytes': ...}
//
// The arrays (3 x 256 MiB) are allocated once per thread count and kept, so
// that a benchmark can measure again next to each timing.
#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "bandwidth.h"

namespace {

PyObject *measure(PyObject *, PyObject *args) {
    int threads = 0, runs = 5;
    if (!PyArg_ParseTuple(args, "|ii", &threads, &runs)) return nullptr;
    if (runs < 1) {
        PyErr_SetString(PyExc_ValueError, "runs must be at least 1");
        return nullptr;
    }
    static std::mutex mutex;
    static std::map<int, std::unique_ptr<kldiv::tools::BandwidthProbe>> probes;
    kldiv::tools::BandwidthCeiling ceiling;
    std::string error;
    Py_BEGIN_ALLOW_THREADS
    try {
        std::lock_guard<std::mutex> lock(mutex);
        const int resolved = kldiv::tools::resolve_threads(threads);
        auto &probe = probes[resolved];
        if (!probe) probe = std::make_unique<kldiv::tools::BandwidthProbe>(resolved);
        ceiling = probe->measure(runs);
    } catch (const std::exception &e) {
        error = e.what();
    }
    Py_END_ALLOW_THREADS
    if (!error.empty()) {
        PyErr_SetString(PyExc_MemoryError, error.c_str());
        return nullptr;
    }
    return Py_BuildValue("{s:d,s:d,s:i,s:n}", "read_gbps", ceiling.read_gbps, "copy_gbps", ceiling.copy_gbps,
                         "threads", ceiling.threads, "array_bytes", (Py_ssize_t)ceiling.array_bytes);
}

PyMethodDef methods[] = {
    {"measure", measure, METH_VARARGS,
     "measure(threads=0, runs=5): the read and copy bandwidth ceilings in GB/s (threads 0: one per core)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "kldiv_bandwidth",
                      "The memory-bandwidth ceiling of kldiv's benchmarks (tools/bandwidth.h).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_kldiv_bandwidth(void) { return PyModule_Create(&module); }
