/* The CUDA part of the C ABI called the way test_api_errors.c calls the rest: NULL for
 * each pointer, bad descriptors, absurd sizes. The arguments are checked before CUDA is
 * touched, so this runs on any machine: without a driver or GPU a well-formed call fails
 * with PYSCHED_CUDA, never a crash. Also the ownership rule of pysched_dlpack_to_capsule
 * (the deleter runs exactly once on every path), with a host-memory DLPack tensor. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "test_util.h"

static char sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

/* DLPack's ABI (dlpack.h, stable since 0.x for these legacy structs). */
typedef struct {
  int32_t device_type;
  int32_t device_id;
} test_dl_device;
typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} test_dl_dtype;
typedef struct {
  void *data;
  test_dl_device device;
  int32_t ndim;
  test_dl_dtype dtype;
  int64_t *shape;
  int64_t *strides;
  uint64_t byte_offset;
} test_dl_tensor;
struct DLManagedTensor {
  test_dl_tensor dl_tensor;
  void *manager_ctx;
  void (*deleter)(struct DLManagedTensor *self);
};

static int deleter_calls;
static void count_deleter(struct DLManagedTensor *self) {
  (void)self;
  deleter_calls++;
}

static float host_data[6] = {1, 2, 3, 4, 5, 6};
static int64_t host_shape[2] = {2, 3};

static DLManagedTensor make_managed(void) {
  DLManagedTensor m;
  memset(&m, 0, sizeof m);
  m.dl_tensor.data = host_data;
  m.dl_tensor.device.device_type = 1; /* kDLCPU */
  m.dl_tensor.ndim = 2;
  m.dl_tensor.dtype.code = 2; /* kDLFloat */
  m.dl_tensor.dtype.bits = 32;
  m.dl_tensor.dtype.lanes = 1;
  m.dl_tensor.shape = host_shape;
  m.deleter = count_deleter;
  return m;
}

/* A call that may fail only for lack of CUDA here: OK or PYSCHED_CUDA. */
#define CHECK_OK_OR_CUDA(expr)                                                    \
  do {                                                                            \
    pysched_error *e_ = NULL;                                                     \
    pysched_status s_ = (expr);                                                   \
    (void)e_;                                                                     \
    if (s_ != PYSCHED_OK && s_ != PYSCHED_CUDA) {                                 \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,               \
              pysched_status_name((int32_t)s_));                                  \
      test_failures++;                                                            \
    }                                                                             \
  } while (0)

static void test_device_queries(void) {
  pysched_error *err = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_cuda_device_count(NULL, &err));
  int32_t count = -7;
  pysched_status st = pysched_cuda_device_count(&count, &err);
  CHECK(st == PYSCHED_OK || st == PYSCHED_CUDA);
  if (st == PYSCHED_OK) {
    CHECK(count > 0);
    printf("test_cuda_args: %d CUDA device(s)\n", count);
  } else {
    CHECK(count == -7);
    CHECK(err != NULL && pysched_error_message(err)[0] != '\0');
    printf("test_cuda_args: no CUDA here: %s\n", pysched_error_message(err));
  }
  pysched_error_free(err);
  err = NULL;
  size_t free_bytes = 0, total_bytes = 0;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_cuda_mem_info(-1, NULL, &total_bytes, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_cuda_mem_info(-1, &free_bytes, NULL, &err));
  CHECK(pysched_cuda_mem_info(-1, NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  st = pysched_cuda_mem_info(INT32_MAX, &free_bytes, &total_bytes, &err);
  CHECK(st == PYSCHED_CUDA || st == PYSCHED_INVALID_ARGUMENT);
  pysched_error_free(err);
  err = NULL;
  st = pysched_cuda_mem_info(-2, &free_bytes, &total_bytes, &err);
  CHECK(st == PYSCHED_CUDA || st == PYSCHED_INVALID_ARGUMENT);
  pysched_error_free(err);
}

static pysched_tensor_desc desc_2x3(void) {
  pysched_tensor_desc d;
  memset(&d, 0, sizeof d);
  d.dtype = PYSCHED_DTYPE_F32;
  d.ndim = 2;
  d.shape = host_shape;
  d.device = -1;
  return d;
}

static void test_tensor_new_arguments(void) {
  pysched_error *err = NULL;
  pysched_tensor *t = SENTINEL;
  pysched_tensor_desc d = desc_2x3();
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, NULL, &t, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_new(NULL, sizeof host_data, &d, &t, &err));
  CHECK(pysched_tensor_new(NULL, 0, NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  /* Size mismatches, bad dtype/ndim/shape/strides. */
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data - 4, &d, &t, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data + 4, &d, &t, &err));
  d.dtype = 7;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  d.dtype = UINT32_MAX;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  d = desc_2x3();
  d.ndim = 65;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  d.ndim = UINT32_MAX;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  d = desc_2x3();
  d.shape = NULL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  int64_t negative[2] = {-2, -3};
  d = desc_2x3();
  d.shape = negative;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  int64_t huge[2] = {INT64_MAX, INT64_MAX};
  d.shape = huge;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  int64_t overflow[3] = {1LL << 40, 1LL << 40, 1LL << 40};
  d.ndim = 3;
  d.shape = overflow;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  d = desc_2x3();
  int64_t bad_strides[2] = {-3, 1};
  d.strides = bad_strides;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  int64_t wide_strides[2] = {100, 1}; /* reaches past the host buffer */
  d.strides = wide_strides;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_new(host_data, sizeof host_data, &d, &t, &err));
  CHECK(t == SENTINEL);
  /* Well-formed: a tensor where CUDA exists, PYSCHED_CUDA otherwise. */
  d = desc_2x3();
  pysched_tensor *ok = NULL;
  pysched_status st = pysched_tensor_new(host_data, sizeof host_data, &d, &ok, &err);
  CHECK(st == PYSCHED_OK || st == PYSCHED_CUDA);
  CHECK((st == PYSCHED_OK) == (ok != NULL));
  pysched_error_free(err);
  err = NULL;
  if (ok) {
    pysched_tensor_info info;
    CHECK_STATUS(PYSCHED_OK, pysched_tensor_get_info(ok, &info, &err));
    CHECK(info.ndim == 2 && info.nbytes == sizeof host_data);
    CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_get_info(ok, NULL, &err));
    CHECK_STATUS(PYSCHED_OK, pysched_tensor_synchronize(ok, &err));
    pysched_tensor_free(ok);
  }
  /* A scalar may have a NULL shape; an empty tensor a NULL host. */
  d.ndim = 0;
  d.shape = NULL;
  float scalar = 1;
  st = pysched_tensor_new(&scalar, sizeof scalar, &d, &ok, &err);
  CHECK(st == PYSCHED_OK || st == PYSCHED_CUDA);
  pysched_error_free(err);
  err = NULL;
  if (st == PYSCHED_OK) {
    pysched_tensor_free(ok);
  }
}

static void test_tensor_null_handles(void) {
  pysched_error *err = NULL;
  pysched_tensor_info info;
  memset(&info, 0, sizeof info);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_get_info(NULL, &info, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_get_info(NULL, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_synchronize(NULL, &err));
  CHECK(pysched_tensor_synchronize(NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  DLManagedTensor *managed = SENTINEL;
  DLManagedTensorVersioned *versioned = SENTINEL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_dlpack(NULL, &managed, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_dlpack(NULL, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_tensor_to_dlpack_versioned(NULL, &versioned, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_dlpack_versioned(NULL, NULL, &err));
  CHECK(managed == SENTINEL && versioned == SENTINEL);
  PyObject *obj = SENTINEL;
  /* Without the GIL, and with it. */
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_pyobject(NULL, &obj, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_capsule(NULL, &obj, &err));
  PyGILState_STATE g = PyGILState_Ensure();
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_pyobject(NULL, &obj, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_pyobject(NULL, NULL, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_capsule(NULL, &obj, &err));
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_tensor_to_capsule(NULL, NULL, &err));
  PyGILState_Release(g);
  CHECK(obj == SENTINEL);
  pysched_tensor_free(NULL);
}

static void test_stager_arguments(void) {
  pysched_error *err = NULL;
  pysched_stager *s = SENTINEL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_stager_new(-1, 0, NULL, &err));
  CHECK(pysched_stager_new(-1, 0, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  /* An absurd pinned size: refused now, or (pinned memory is allocated on first use)
   * accepted, and then the first upload fails with an error instead of crashing. */
  pysched_status st = pysched_stager_new(-1, UINT64_MAX, &s, &err);
  CHECK(st == PYSCHED_OK || st == PYSCHED_INVALID_ARGUMENT || st == PYSCHED_CUDA);
  pysched_error_free(err);
  err = NULL;
  CHECK((st == PYSCHED_OK) == (s != SENTINEL));
  pysched_tensor_desc d = desc_2x3();
  pysched_tensor *t = SENTINEL;
  if (st == PYSCHED_OK) {
    pysched_status up = pysched_stager_upload(s, host_data, sizeof host_data, &d, &t, &err);
    if (up == PYSCHED_OK) {
      fprintf(stderr, "note: a stager with UINT64_MAX pinned bytes uploaded anyway\n");
      pysched_tensor_free(t);
      t = SENTINEL;
    } else {
      CHECK(up == PYSCHED_CUDA || up == PYSCHED_INVALID_ARGUMENT);
      CHECK(t == SENTINEL);
      printf("test_cuda_args: UINT64_MAX pinned bytes: accepted, first upload: %s: %s\n",
             pysched_status_name((int32_t)up), pysched_error_message(err));
    }
    pysched_error_free(err);
    err = NULL;
    pysched_stager_free(s);
  }
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
               pysched_stager_upload(NULL, host_data, sizeof host_data, &d, &t, &err));
  CHECK(pysched_stager_upload(NULL, NULL, 0, NULL, NULL, NULL) == PYSCHED_INVALID_ARGUMENT);
  CHECK(t == SENTINEL);
  CHECK(pysched_stager_stream(NULL) == 0);
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_stager_synchronize(NULL, &err));
  pysched_stager_free(NULL);

  /* A real stager where CUDA exists: bad uploads are refused before any copy. */
  pysched_stager *real = NULL;
  st = pysched_stager_new(-1, 1 << 20, &real, &err);
  CHECK(st == PYSCHED_OK || st == PYSCHED_CUDA);
  pysched_error_free(err);
  err = NULL;
  if (real) {
    CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
                 pysched_stager_upload(real, host_data, sizeof host_data, NULL, &t, &err));
    CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
                 pysched_stager_upload(real, host_data, sizeof host_data, &d, NULL, &err));
    CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
                 pysched_stager_upload(real, host_data, 3, &d, &t, &err));
    CHECK_STATUS(PYSCHED_INVALID_ARGUMENT,
                 pysched_stager_upload(real, NULL, sizeof host_data, &d, &t, &err));
    CHECK(t == SENTINEL);
    CHECK_STATUS(PYSCHED_OK, pysched_stager_upload(real, host_data, sizeof host_data, &d, &t, &err));
    CHECK_STATUS(PYSCHED_OK, pysched_stager_synchronize(real, &err));
    pysched_tensor_free(t);
    pysched_stager_free(real);
  }
}

/* Ownership passes to pysched_dlpack_to_capsule on every path. */
static void test_dlpack_to_capsule_ownership(void) {
  pysched_error *err = NULL;
  PyObject *capsule = SENTINEL;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_dlpack_to_capsule(NULL, &capsule, &err));
  CHECK(capsule == SENTINEL);

  /* Without the GIL: refused, deleter called once. */
  DLManagedTensor m = make_managed();
  deleter_calls = 0;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_dlpack_to_capsule(&m, &capsule, &err));
  CHECK(deleter_calls == 1);
  CHECK(capsule == SENTINEL);

  PyGILState_STATE g = PyGILState_Ensure();
  /* NULL out_capsule: refused, deleter called once. */
  m = make_managed();
  deleter_calls = 0;
  CHECK_STATUS(PYSCHED_INVALID_ARGUMENT, pysched_dlpack_to_capsule(&m, NULL, &err));
  CHECK(deleter_calls == 1);

  /* Not consumed: the capsule's destructor calls the deleter once. */
  m = make_managed();
  deleter_calls = 0;
  capsule = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_dlpack_to_capsule(&m, &capsule, &err));
  REQUIRE(capsule != NULL);
  CHECK(PyCapsule_IsValid(capsule, "dltensor"));
  CHECK(PyCapsule_GetPointer(capsule, "dltensor") == &m);
  CHECK(deleter_calls == 0);
  Py_DECREF(capsule);
  CHECK(deleter_calls == 1);

  /* Consumed (renamed by the consumer, who calls the deleter itself): not again. */
  m = make_managed();
  deleter_calls = 0;
  CHECK_STATUS(PYSCHED_OK, pysched_dlpack_to_capsule(&m, &capsule, &err));
  REQUIRE(capsule != NULL);
  CHECK(PyCapsule_SetName(capsule, "used_dltensor") == 0);
  m.deleter(&m);
  Py_DECREF(capsule);
  CHECK(deleter_calls == 1);

  /* A managed tensor without a deleter is fine. */
  m = make_managed();
  m.deleter = NULL;
  CHECK_STATUS(PYSCHED_OK, pysched_dlpack_to_capsule(&m, &capsule, &err));
  Py_XDECREF(capsule);
  PyGILState_Release(g);

  /* The destructor may run on a thread without the GIL taken beforehand: it takes it
   * itself (here: the last reference dropped from another attach). */
  m = make_managed();
  deleter_calls = 0;
  g = PyGILState_Ensure();
  CHECK_STATUS(PYSCHED_OK, pysched_dlpack_to_capsule(&m, &capsule, &err));
  PyGILState_Release(g);
  g = PyGILState_Ensure();
  Py_XDECREF(capsule);
  PyGILState_Release(g);
  CHECK(deleter_calls == 1);
}

int main(void) {
  pysched_manager *m = test_manager();
  test_device_queries();
  test_tensor_new_arguments();
  test_tensor_null_handles();
  test_stager_arguments();
  test_dlpack_to_capsule_ownership();
  pysched_manager_free(m);
  return test_finish("test_cuda_args");
}
