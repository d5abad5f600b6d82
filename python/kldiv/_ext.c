/* kldiv._ext: the kernel calls of the kldiv package, from Python tensors to the C ABI.
 *
 * A call reads each tensor's data pointer, dtype, sizes, strides and device
 * through the Python C API, fills kldiv_tensor descriptors on the stack and
 * calls the library with the GIL released. Building ctypes structures per
 * call cost more than a small tensor's kernel; this costs a few attribute
 * reads. The module uses CPython's stable ABI (abi3, 3.10 and later) and no
 * torch header, so one build serves every Python 3.10+ and every torch; the
 * library's functions are bound at import (kldiv._lib), so that the package
 * uses the one libkldiv it loaded.
 */
#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "kldiv/kldiv.h"

typedef int (*forward_fn)(const kldiv_tensor *, const kldiv_tensor *, kldiv_reduction, int, const kldiv_tensor *);
typedef int (*backward_fn)(const kldiv_tensor *, const kldiv_tensor *, const kldiv_tensor *, kldiv_reduction, int,
                           const kldiv_tensor *, const kldiv_tensor *);
typedef int (*forward_backward_fn)(const kldiv_tensor *, const kldiv_tensor *, kldiv_reduction, int,
                                   const kldiv_tensor *, const kldiv_tensor *);
typedef int (*distill_forward_fn)(const kldiv_tensor *, const kldiv_tensor *, const kldiv_distill_options *,
                                  const kldiv_tensor *, double *);
typedef int (*distill_forward_backward_fn)(const kldiv_tensor *, const kldiv_tensor *, const kldiv_distill_options *,
                                           const kldiv_tensor *, const kldiv_tensor *, double *);
typedef int (*distill_backward_fn)(const kldiv_tensor *, const kldiv_tensor *, const kldiv_tensor *,
                                   const kldiv_distill_options *, const double *, const kldiv_tensor *,
                                   const kldiv_tensor *);
typedef const char *(*last_error_fn)(void);

static struct {
    forward_fn forward;
    backward_fn backward;
    forward_backward_fn forward_backward;
    distill_forward_fn distill_forward;
    distill_forward_backward_fn distill_forward_backward;
    distill_backward_fn distill_backward;
    last_error_fn last_error;
} library;

/* torch.float32, float64, float16 and bfloat16, in kldiv_dtype's order (set by bind_dtypes). */
static PyObject *dtypes[4];

static PyObject *name_data_ptr, *name_dtype, *name_shape, *name_stride, *name_is_cuda;

/* A tensor's descriptor with room for its sizes and strides. */
typedef struct {
    kldiv_tensor tensor;
    int64_t sizes[KLDIV_MAX_RANK];
    int64_t strides[KLDIV_MAX_RANK];
} View;

static int read_int64s(PyObject *tuple, int64_t *values, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        values[i] = PyLong_AsLongLong(PyTuple_GetItem(tuple, i));
        if (values[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* Fills `view` from a torch.Tensor; `name` names it in errors. 0, or -1 with a Python error set. */
static int view_of(PyObject *tensor, const char *name, View *view) {
    int status = -1;
    PyObject *pointer = NULL, *dtype = NULL, *shape = NULL, *strides = NULL, *is_cuda = NULL;
    if (!(pointer = PyObject_CallMethodObjArgs(tensor, name_data_ptr, NULL))) goto done;
    view->tensor.data = PyLong_AsVoidPtr(pointer);
    if (view->tensor.data == NULL && PyErr_Occurred()) goto done;
    if (!(dtype = PyObject_GetAttr(tensor, name_dtype))) goto done;
    int code = 0;
    while (code < 4 && dtypes[code] != dtype) code++;
    if (code == 4) {
        PyErr_Format(PyExc_TypeError, "%s: kldiv takes float32, float64, float16 and bfloat16 tensors", name);
        goto done;
    }
    view->tensor.dtype = (kldiv_dtype)code;
    if (!(shape = PyObject_GetAttr(tensor, name_shape)) || !(strides = PyObject_CallMethodObjArgs(tensor, name_stride, NULL)))
        goto done;
    if (!PyTuple_Check(shape) || !PyTuple_Check(strides)) {
        PyErr_Format(PyExc_TypeError, "%s: shape and stride() must be tuples", name);
        goto done;
    }
    const Py_ssize_t rank = PyTuple_Size(shape);
    if (rank > KLDIV_MAX_RANK || PyTuple_Size(strides) != rank) {
        PyErr_Format(PyExc_RuntimeError, "%s: rank %zd is over the limit of %d", name, rank, KLDIV_MAX_RANK);
        goto done;
    }
    if (read_int64s(shape, view->sizes, rank) || read_int64s(strides, view->strides, rank)) goto done;
    view->tensor.rank = (int32_t)rank;
    view->tensor.sizes = view->sizes;
    view->tensor.strides = view->strides;
    if (!(is_cuda = PyObject_GetAttr(tensor, name_is_cuda))) goto done;
    view->tensor.device = is_cuda == Py_True ? KLDIV_DEVICE_CUDA : KLDIV_DEVICE_CPU;
    status = 0;
done:
    Py_XDECREF(pointer);
    Py_XDECREF(dtype);
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    Py_XDECREF(is_cuda);
    return status;
}

/* Fills `view` from a tensor the package has just allocated for an output:
 * contiguous, with the dtype and device of `like`. Only its data pointer and
 * shape are read. */
static int output_view_of(PyObject *tensor, const View *like, View *view) {
    int status = -1;
    PyObject *pointer = NULL, *shape = NULL;
    if (!(pointer = PyObject_CallMethodObjArgs(tensor, name_data_ptr, NULL))) goto done;
    view->tensor.data = PyLong_AsVoidPtr(pointer);
    if (view->tensor.data == NULL && PyErr_Occurred()) goto done;
    if (!(shape = PyObject_GetAttr(tensor, name_shape))) goto done;
    if (!PyTuple_Check(shape) || PyTuple_Size(shape) > KLDIV_MAX_RANK) {
        PyErr_SetString(PyExc_TypeError, "an output's shape must be a tuple of at most KLDIV_MAX_RANK sizes");
        goto done;
    }
    const Py_ssize_t rank = PyTuple_Size(shape);
    if (read_int64s(shape, view->sizes, rank)) goto done;
    int64_t stride = 1;
    for (Py_ssize_t d = rank - 1; d >= 0; d--) {
        view->strides[d] = stride;
        stride *= view->sizes[d] > 1 ? view->sizes[d] : 1;
    }
    view->tensor.dtype = like->tensor.dtype;
    view->tensor.device = like->tensor.device;
    view->tensor.rank = (int32_t)rank;
    view->tensor.sizes = view->sizes;
    view->tensor.strides = view->strides;
    status = 0;
done:
    Py_XDECREF(pointer);
    Py_XDECREF(shape);
    return status;
}

/* An output view of `tensor` (as output_view_of), or NULL for None. */
static int optional_output_view_of(PyObject *tensor, const View *like, View *view, const kldiv_tensor **out) {
    if (tensor == Py_None) {
        *out = NULL;
        return 0;
    }
    *out = &view->tensor;
    return output_view_of(tensor, like, view);
}

static int64_t elements(const View *view) {
    int64_t n = 1;
    for (int d = 0; d < view->tensor.rank; d++) n *= view->sizes[d];
    return n;
}

/* Calls on few elements keep the GIL: they take less time than handing it over. */
static int releases_gil(const View *a, const View *b) { return elements(a) >= 4096 || elements(b) >= 4096; }

static int ready(void) {
    if (library.forward == NULL || dtypes[0] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kldiv._ext: the library is not bound (kldiv._lib binds it at import)");
        return 0;
    }
    return 1;
}

static PyObject *result(int status) {
    if (status != 0) {
        PyErr_SetString(PyExc_RuntimeError, library.last_error());
        return NULL;
    }
    Py_RETURN_NONE;
}

static int arity(Py_ssize_t got, Py_ssize_t want, const char *function) {
    if (got == want) return 1;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", function, want, got);
    return 0;
}

static int int_argument(PyObject *value, int *out) {
    const long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int)v;
    return 0;
}

/* The library call `call`, with the GIL released when operand `a` or `b` has many elements. */
#define CALL(a, b, call)                  \
    int status;                           \
    if (releases_gil(a, b)) {             \
        Py_BEGIN_ALLOW_THREADS            \
        status = call;                    \
        Py_END_ALLOW_THREADS              \
    } else {                              \
        status = call;                    \
    }                                     \
    return result(status)

/* Outputs (the last arguments of each call) are tensors the package has just
 * allocated: contiguous, of the inputs' dtype and device (see output_view_of). */

/* forward(input, target, reduction, log_target, out) */
static PyObject *forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    View input, target, out;
    int reduction, log_target;
    if (!ready() || !arity(nargs, 5, "forward") || view_of(args[0], "input", &input) ||
        view_of(args[1], "target", &target) || int_argument(args[2], &reduction) ||
        int_argument(args[3], &log_target) || output_view_of(args[4], &input, &out))
        return NULL;
    CALL(&input, &target, library.forward(&input.tensor, &target.tensor, (kldiv_reduction)reduction, log_target, &out.tensor));
}

/* backward(grad_output, input, target, reduction, log_target, grad_input or None, grad_target or None) */
static PyObject *backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    View grad_output, input, target, grad_input, grad_target;
    const kldiv_tensor *grad_input_p, *grad_target_p;
    int reduction, log_target;
    if (!ready() || !arity(nargs, 7, "backward") || view_of(args[0], "grad_output", &grad_output) ||
        view_of(args[1], "input", &input) || view_of(args[2], "target", &target) ||
        int_argument(args[3], &reduction) || int_argument(args[4], &log_target) ||
        optional_output_view_of(args[5], &input, &grad_input, &grad_input_p) ||
        optional_output_view_of(args[6], &target, &grad_target, &grad_target_p))
        return NULL;
    CALL(&input, &target, library.backward(&grad_output.tensor, &input.tensor, &target.tensor, (kldiv_reduction)reduction,
                                  log_target, grad_input_p, grad_target_p));
}

/* forward_backward(input, target, reduction, log_target, out, grad_input) */
static PyObject *forward_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    View input, target, out, grad_input;
    int reduction, log_target;
    if (!ready() || !arity(nargs, 6, "forward_backward") || view_of(args[0], "input", &input) ||
        view_of(args[1], "target", &target) || int_argument(args[2], &reduction) ||
        int_argument(args[3], &log_target) || output_view_of(args[4], &input, &out) ||
        output_view_of(args[5], &input, &grad_input))
        return NULL;
    CALL(&input, &target, library.forward_backward(&input.tensor, &target.tensor, (kldiv_reduction)reduction, log_target,
                                          &out.tensor, &grad_input.tensor));
}

/* The distillation options from (temperature, reduction, reverse, temperature_squared, row_mask address or 0). */
static int distill_options_of(PyObject *tuple, kldiv_distill_options *options) {
    if (!PyTuple_Check(tuple) || PyTuple_Size(tuple) != 5) {
        PyErr_SetString(PyExc_TypeError, "distillation options: a tuple of 5 values");
        return -1;
    }
    int reduction, reverse, squared;
    options->temperature = PyFloat_AsDouble(PyTuple_GetItem(tuple, 0));
    if (options->temperature == -1.0 && PyErr_Occurred()) return -1;
    if (int_argument(PyTuple_GetItem(tuple, 1), &reduction) || int_argument(PyTuple_GetItem(tuple, 2), &reverse) ||
        int_argument(PyTuple_GetItem(tuple, 3), &squared))
        return -1;
    options->reduction = (kldiv_reduction)reduction;
    options->reverse = reverse;
    options->temperature_squared = squared;
    options->row_mask = (const uint8_t *)PyLong_AsVoidPtr(PyTuple_GetItem(tuple, 4));
    return options->row_mask == NULL && PyErr_Occurred() ? -1 : 0;
}

/* An address given as an int (0: none). */
static int address_of(PyObject *value, void **out) {
    *out = PyLong_AsVoidPtr(value);
    return *out == NULL && PyErr_Occurred() ? -1 : 0;
}

/* distill_forward(student, teacher, options, out, row_stats address or 0) */
static PyObject *distill_forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    View student, teacher, out;
    kldiv_distill_options options;
    void *stats;
    if (!ready() || !arity(nargs, 5, "distill_forward") || view_of(args[0], "student", &student) ||
        view_of(args[1], "teacher", &teacher) || distill_options_of(args[2], &options) ||
        output_view_of(args[3], &student, &out) || address_of(args[4], &stats))
        return NULL;
    CALL(&student, &teacher, library.distill_forward(&student.tensor, &teacher.tensor, &options, &out.tensor, (double *)stats));
}

/* distill_forward_backward(student, teacher, options, out, grad_student) */
static PyObject *distill_forward_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    View student, teacher, out, grad;
    kldiv_distill_options options;
    if (!ready() || !arity(nargs, 5, "distill_forward_backward") || view_of(args[0], "student", &student) ||
        view_of(args[1], "teacher", &teacher) || distill_options_of(args[2], &options) ||
        output_view_of(args[3], &student, &out) || output_view_of(args[4], &student, &grad))
        return NULL;
    CALL(&student, &teacher, library.distill_forward_backward(&student.tensor, &teacher.tensor, &options, &out.tensor,
                                                    &grad.tensor, NULL));
}

/* distill_backward(grad_output, student, teacher, options, row_stats address or 0,
 *                  grad_student or None, grad_teacher or None) */
static PyObject *distill_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    View grad_output, student, teacher, grad_student, grad_teacher;
    const kldiv_tensor *grad_student_p, *grad_teacher_p;
    kldiv_distill_options options;
    void *stats;
    if (!ready() || !arity(nargs, 7, "distill_backward") || view_of(args[0], "grad_output", &grad_output) ||
        view_of(args[1], "student", &student) || view_of(args[2], "teacher", &teacher) ||
        distill_options_of(args[3], &options) || address_of(args[4], &stats) ||
        optional_output_view_of(args[5], &student, &grad_student, &grad_student_p) ||
        optional_output_view_of(args[6], &teacher, &grad_teacher, &grad_teacher_p))
        return NULL;
    CALL(&student, &teacher, library.distill_backward(&grad_output.tensor, &student.tensor, &teacher.tensor, &options,
                                            (const double *)stats, grad_student_p, grad_teacher_p));
}

/* bind(forward, backward, forward_backward, distill_forward, distill_forward_backward, distill_backward,
 *      last_error): the library's functions, as addresses. */
static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *f[7];
    if (!arity(nargs, 7, "bind")) return NULL;
    for (int i = 0; i < 7; i++) {
        if (address_of(args[i], &f[i])) return NULL;
        if (f[i] == NULL) {
            PyErr_SetString(PyExc_ValueError, "bind: a null function");
            return NULL;
        }
    }
    library.forward = (forward_fn)f[0];
    library.backward = (backward_fn)f[1];
    library.forward_backward = (forward_backward_fn)f[2];
    library.distill_forward = (distill_forward_fn)f[3];
    library.distill_forward_backward = (distill_forward_backward_fn)f[4];
    library.distill_backward = (distill_backward_fn)f[5];
    library.last_error = (last_error_fn)f[6];
    Py_RETURN_NONE;
}

/* bind_dtypes(float32, float64, float16, bfloat16): torch's dtype objects, in kldiv_dtype's order. */
static PyObject *bind_dtypes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (!arity(nargs, 4, "bind_dtypes")) return NULL;
    for (int i = 0; i < 4; i++) {
        PyObject *old = dtypes[i];
        Py_INCREF(args[i]);
        dtypes[i] = args[i];
        Py_XDECREF(old);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL, "kldiv_forward on tensors."},
    {"backward", (PyCFunction)(void (*)(void))backward, METH_FASTCALL, "kldiv_backward on tensors."},
    {"forward_backward", (PyCFunction)(void (*)(void))forward_backward, METH_FASTCALL,
     "kldiv_forward_backward on tensors."},
    {"distill_forward", (PyCFunction)(void (*)(void))distill_forward, METH_FASTCALL,
     "kldiv_distill_forward on tensors."},
    {"distill_forward_backward", (PyCFunction)(void (*)(void))distill_forward_backward, METH_FASTCALL,
     "kldiv_distill_forward_backward on tensors."},
    {"distill_backward", (PyCFunction)(void (*)(void))distill_backward, METH_FASTCALL,
     "kldiv_distill_backward on tensors."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, "Binds the library's functions (addresses)."},
    {"bind_dtypes", (PyCFunction)(void (*)(void))bind_dtypes, METH_FASTCALL,
     "Binds torch's float32, float64, float16 and bfloat16 dtype objects."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kldiv._ext",
                                    "The kldiv package's kernel calls on tensors (see _ext.c).", -1, methods};

PyMODINIT_FUNC PyInit__ext(void) {
    if (!(name_data_ptr = PyUnicode_InternFromString("data_ptr")) || !(name_dtype = PyUnicode_InternFromString("dtype")) ||
        !(name_shape = PyUnicode_InternFromString("shape")) || !(name_stride = PyUnicode_InternFromString("stride")) ||
        !(name_is_cuda = PyUnicode_InternFromString("is_cuda")))
        return NULL;
    return PyModule_Create(&module);
}
