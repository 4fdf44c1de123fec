//! The CUDA driver API, loaded at run time: the library is located and opened by cudarc
//! (after `is_culib_present`, since opening a missing library panics inside cudarc), and
//! the few entry points pyscheduler needs are resolved once into a table whose
//! signatures return plain `c_int`. cudarc's own wrappers return a Rust enum generated
//! for one CUDA version, and a newer driver may return codes that enum lacks (undefined
//! behaviour), or lack a symbol (a panic); the table turns both into ordinary errors.
//!
//! RAII owners for the driver objects pyscheduler creates (primary context, streams,
//! events, device and pinned memory) live here too; each is `Send + Sync` and makes its
//! device's context current around every call, so it may be used and dropped on any
//! thread.
//!
//! The bottom of `cuda`: may call `crate::error` only.

use crate::error::{Error, ErrorKind, Result};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::marker::PhantomData;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

pub(crate) type CUresult = c_int;
pub(crate) type CUdevice = c_int;
pub(crate) type CUdeviceptr = u64;
pub(crate) type CUcontext = *mut c_void;
pub(crate) type CUstream = *mut c_void;
pub(crate) type CUevent = *mut c_void;
pub(crate) type CUmemoryPool = *mut c_void;

const CUDA_SUCCESS: CUresult = 0;
const CUDA_ERROR_NO_DEVICE: CUresult = 100;
const CUDA_ERROR_NOT_READY: CUresult = 600;
const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;
const CU_STREAM_NON_BLOCKING: c_uint = 0x1;
/// `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`.
const CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: c_int = 115;
/// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD` (a `cuuint64_t`).
const CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: c_int = 4;

/// The legacy default stream (`CU_STREAM_LEGACY`): implicitly synchronizes with every
/// blocking stream of its context.
pub(crate) const CU_STREAM_LEGACY: CUstream = 0x1 as CUstream;
/// The per-thread default stream (`CU_STREAM_PER_THREAD`).
pub(crate) const CU_STREAM_PER_THREAD: CUstream = 0x2 as CUstream;

macro_rules! driver_api {
    ($($field:ident = $symbol:literal : fn($($arg:ty),*);)*) => {
        /// Entry points of libcuda, resolved once.
        #[allow(non_snake_case)]
        pub(crate) struct Api {
            $(pub(crate) $field: unsafe extern "C" fn($($arg),*) -> CUresult,)*
        }

        impl Api {
            /// Resolves every entry point in the library cudarc opened.
            ///
            /// SAFETY (caller): `is_culib_present()` returned true, so `culib()` does not
            /// panic; each symbol is declared with the signature of the CUDA driver API.
            unsafe fn load() -> std::result::Result<Api, String> {
                let lib = cudarc::driver::sys::culib();
                Ok(Api {
                    $($field: *lib
                        .get::<unsafe extern "C" fn($($arg),*) -> CUresult>($symbol)
                        .map_err(|e| format!("{}: {e}", $symbol.to_string_lossy()))?,)*
                })
            }
        }
    };
}

driver_api! {
    init = c"cuInit": fn(c_uint);
    device_get_count = c"cuDeviceGetCount": fn(*mut c_int);
    device_get = c"cuDeviceGet": fn(*mut CUdevice, c_int);
    primary_ctx_retain = c"cuDevicePrimaryCtxRetain": fn(*mut CUcontext, CUdevice);
    ctx_get_current = c"cuCtxGetCurrent": fn(*mut CUcontext);
    ctx_get_device = c"cuCtxGetDevice": fn(*mut CUdevice);
    ctx_push_current = c"cuCtxPushCurrent_v2": fn(CUcontext);
    ctx_pop_current = c"cuCtxPopCurrent_v2": fn(*mut CUcontext);
    ctx_synchronize = c"cuCtxSynchronize": fn();
    mem_alloc = c"cuMemAlloc_v2": fn(*mut CUdeviceptr, usize);
    mem_free = c"cuMemFree_v2": fn(CUdeviceptr);
    mem_host_alloc = c"cuMemHostAlloc": fn(*mut *mut c_void, usize, c_uint);
    mem_free_host = c"cuMemFreeHost": fn(*mut c_void);
    mem_get_info = c"cuMemGetInfo_v2": fn(*mut usize, *mut usize);
    memcpy_htod_async = c"cuMemcpyHtoDAsync_v2": fn(CUdeviceptr, *const c_void, usize, CUstream);
    memcpy_dtoh_async = c"cuMemcpyDtoHAsync_v2": fn(*mut c_void, CUdeviceptr, usize, CUstream);
    stream_create = c"cuStreamCreate": fn(*mut CUstream, c_uint);
    stream_destroy = c"cuStreamDestroy_v2": fn(CUstream);
    stream_synchronize = c"cuStreamSynchronize": fn(CUstream);
    stream_wait_event = c"cuStreamWaitEvent": fn(CUstream, CUevent, c_uint);
    event_create = c"cuEventCreate": fn(*mut CUevent, c_uint);
    event_destroy = c"cuEventDestroy_v2": fn(CUevent);
    event_record = c"cuEventRecord": fn(CUevent, CUstream);
    event_query = c"cuEventQuery": fn(CUevent);
    event_synchronize = c"cuEventSynchronize": fn(CUevent);
    get_error_name = c"cuGetErrorName": fn(CUresult, *mut *const c_char);
    get_error_string = c"cuGetErrorString": fn(CUresult, *mut *const c_char);
}

/// The stream-ordered allocator's entry points (CUDA 11.2+), resolved once; absent
/// from older drivers, which then keep `cuMemAlloc` / `cuMemFree`.
pub(crate) struct PoolApi {
    device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, CUdevice) -> CUresult,
    device_get_default_mem_pool: unsafe extern "C" fn(*mut CUmemoryPool, CUdevice) -> CUresult,
    mem_pool_set_attribute: unsafe extern "C" fn(CUmemoryPool, c_int, *mut c_void) -> CUresult,
    mem_alloc_async: unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult,
    mem_free_async: unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult,
}

impl PoolApi {
    /// Resolves the entry points; None if any is missing.
    ///
    /// SAFETY (caller): as `Api::load`; each symbol is declared with its driver API
    /// signature.
    unsafe fn load() -> Option<PoolApi> {
        let lib = cudarc::driver::sys::culib();
        Some(PoolApi {
            device_get_attribute: *lib.get(b"cuDeviceGetAttribute\0").ok()?,
            device_get_default_mem_pool: *lib.get(b"cuDeviceGetDefaultMemPool\0").ok()?,
            mem_pool_set_attribute: *lib.get(b"cuMemPoolSetAttribute\0").ok()?,
            mem_alloc_async: *lib.get(b"cuMemAllocAsync\0").ok()?,
            mem_free_async: *lib.get(b"cuMemFreeAsync\0").ok()?,
        })
    }
}

/// The loaded and initialized driver.
pub(crate) struct Driver {
    pub(crate) api: Api,
    /// None where the driver lacks the stream-ordered allocator.
    pool_api: Option<PoolApi>,
    device_count: i32,
    /// One slot per device, filled on first use (primary context retained for the life
    /// of the process, like the CUDA runtime does).
    devices: Box<[OnceLock<Result<Device>>]>,
}

static DRIVER: OnceLock<Result<Driver>> = OnceLock::new();

/// The message of the error every CUDA entry point returns where libcuda is missing.
pub const NO_DRIVER_MESSAGE: &str = "no CUDA driver found";
/// The message of the error every CUDA entry point returns where no GPU is visible.
pub const NO_DEVICE_MESSAGE: &str = "no CUDA device";

/// The driver, loaded and initialized on first use. Fails with kind `Cuda` and
/// "no CUDA driver found" when libcuda cannot be loaded, "no CUDA device" when it finds
/// no GPU. Never panics.
pub(crate) fn driver() -> Result<&'static Driver> {
    DRIVER.get_or_init(load_driver).as_ref().map_err(Clone::clone)
}

fn load_driver() -> Result<Driver> {
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    let present = catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() });
    if !matches!(present, Ok(true)) {
        return Err(Error::new(
            ErrorKind::Cuda,
            format!(
                "{NO_DRIVER_MESSAGE} (libcuda.so.1 could not be loaded: install the NVIDIA \
                 driver or put its directory on LD_LIBRARY_PATH)"
            ),
        ));
    }
    // SAFETY: the library is present (checked above); see Api::load.
    let api = match catch_unwind(|| unsafe { Api::load() }) {
        Ok(Ok(api)) => api,
        Ok(Err(missing)) => {
            return Err(Error::new(
                ErrorKind::Cuda,
                format!("the CUDA driver library is too old or incomplete: missing {missing}"),
            ))
        }
        Err(_) => {
            return Err(Error::new(ErrorKind::Cuda, format!("{NO_DRIVER_MESSAGE} (loading libcuda failed)")))
        }
    };
    // SAFETY: as above; a missing symbol yields None.
    let pool_api = catch_unwind(|| unsafe { PoolApi::load() }).ok().flatten();
    // SAFETY: cuInit may be called any number of times from any thread.
    let rc = unsafe { (api.init)(0) };
    if rc == CUDA_ERROR_NO_DEVICE {
        return Err(Error::new(
            ErrorKind::Cuda,
            format!("{NO_DEVICE_MESSAGE} (cuInit: CUDA_ERROR_NO_DEVICE)"),
        ));
    }
    check_with(&api, rc, "cuInit")?;
    let mut count: c_int = 0;
    // SAFETY: the driver is initialized; count is a valid out-pointer.
    check_with(&api, unsafe { (api.device_get_count)(&mut count) }, "cuDeviceGetCount")?;
    if count <= 0 {
        return Err(Error::new(ErrorKind::Cuda, NO_DEVICE_MESSAGE));
    }
    Ok(Driver { api, pool_api, device_count: count, devices: (0..count).map(|_| OnceLock::new()).collect() })
}

fn error_text(api: &Api, rc: CUresult) -> String {
    let mut name: *const c_char = std::ptr::null();
    let mut text: *const c_char = std::ptr::null();
    // SAFETY: both functions only write a pointer to a static string (or leave it NULL
    // for unknown codes, which the driver reports with a non-zero result).
    unsafe {
        if (api.get_error_name)(rc, &mut name) != CUDA_SUCCESS {
            name = std::ptr::null();
        }
        if (api.get_error_string)(rc, &mut text) != CUDA_SUCCESS {
            text = std::ptr::null();
        }
    }
    let read = |p: *const c_char| {
        // SAFETY: non-NULL pointers from the driver are static NUL-terminated strings.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    match (read(name), read(text)) {
        (Some(n), Some(t)) => format!("{n} ({rc}): {t}"),
        (Some(n), None) => format!("{n} ({rc})"),
        _ => format!("CUDA error {rc}"),
    }
}

fn check_with(api: &Api, rc: CUresult, what: &str) -> Result<()> {
    if rc == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Cuda, format!("{what} failed: {}", error_text(api, rc))))
    }
}

impl Driver {
    /// Turns a driver result into an error of kind `Cuda` naming the call.
    pub(crate) fn check(&self, rc: CUresult, what: &str) -> Result<()> {
        check_with(&self.api, rc, what)
    }

    pub(crate) fn device_count(&self) -> i32 {
        self.device_count
    }

    /// The device with this ordinal; -1 means the device of the context current on the
    /// calling thread (as the CUDA runtime's current device), else device 0.
    pub(crate) fn device(&'static self, ordinal: i32) -> Result<&'static Device> {
        let ordinal = if ordinal == -1 { self.current_ordinal()? } else { ordinal };
        if ordinal < 0 || ordinal >= self.device_count {
            return Err(Error::new(
                ErrorKind::Cuda,
                format!("{NO_DEVICE_MESSAGE} {ordinal} ({} present)", self.device_count),
            ));
        }
        self.devices[ordinal as usize]
            .get_or_init(|| self.open_device(ordinal))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn current_ordinal(&self) -> Result<i32> {
        let mut ctx: CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the driver is initialized.
        self.check(unsafe { (self.api.ctx_get_current)(&mut ctx) }, "cuCtxGetCurrent")?;
        if ctx.is_null() {
            return Ok(0);
        }
        let mut dev: CUdevice = 0;
        // SAFETY: a context is current on this thread; valid out-pointer.
        self.check(unsafe { (self.api.ctx_get_device)(&mut dev) }, "cuCtxGetDevice")?;
        Ok(dev)
    }

    fn open_device(&'static self, ordinal: i32) -> Result<Device> {
        let mut dev: CUdevice = 0;
        // SAFETY: ordinal is in range; valid out-pointers.
        self.check(unsafe { (self.api.device_get)(&mut dev, ordinal) }, "cuDeviceGet")?;
        let mut ctx: CUcontext = std::ptr::null_mut();
        // SAFETY: as above. The primary context is the one the CUDA runtime (and so
        // PyTorch) uses; it is retained once and never released.
        self.check(unsafe { (self.api.primary_ctx_retain)(&mut ctx, dev) }, "cuDevicePrimaryCtxRetain")?;
        let mut device = Device { ordinal, ctx, driver: self, sync_stream: OnceLock::new(), pooled: false };
        device.pooled = self.setup_pool(&device, dev);
        Ok(device)
    }

    /// Whether `device` allocates from its default memory pool (stream-ordered). The
    /// pool's release threshold is raised to the maximum so freed memory stays cached
    /// for the next allocations instead of going back to the OS at every synchronize.
    fn setup_pool(&self, device: &Device, dev: CUdevice) -> bool {
        let Some(pool_api) = &self.pool_api else {
            return false;
        };
        let Ok(_ctx) = device.enter() else {
            return false;
        };
        let mut supported: c_int = 0;
        // SAFETY: valid out-pointer; dev is a device of this driver.
        let rc = unsafe {
            (pool_api.device_get_attribute)(&mut supported, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, dev)
        };
        if rc != CUDA_SUCCESS || supported == 0 {
            return false;
        }
        let mut pool: CUmemoryPool = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        if unsafe { (pool_api.device_get_default_mem_pool)(&mut pool, dev) } != CUDA_SUCCESS || pool.is_null()
        {
            return false;
        }
        let mut threshold: u64 = u64::MAX;
        // SAFETY: the release threshold attribute takes a pointer to a cuuint64_t. A
        // failure only means the pool trims itself more eagerly: still correct.
        unsafe {
            (pool_api.mem_pool_set_attribute)(
                pool,
                CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        };
        true
    }
}

/// Number of CUDA devices. Errors as [`driver`] does.
pub fn device_count() -> Result<i32> {
    Ok(driver()?.device_count())
}

/// (free, total) bytes of device memory on `device` (-1: the current device), as
/// `cuMemGetInfo` reports them.
pub fn mem_info(device: i32) -> Result<(usize, usize)> {
    let dev = driver()?.device(device)?;
    let _ctx = dev.enter()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: the device's context is current; valid out-pointers.
    dev.check(unsafe { (dev.api().mem_get_info)(&mut free, &mut total) }, "cuMemGetInfo")?;
    Ok((free, total))
}

/// One GPU and its primary context.
pub(crate) struct Device {
    pub(crate) ordinal: i32,
    ctx: CUcontext,
    driver: &'static Driver,
    /// The stream of synchronous uploads (`DeviceTensor::from_host`), made on first use.
    sync_stream: OnceLock<Result<Arc<Stream>>>,
    /// Device memory comes from the default memory pool, stream-ordered
    /// (`cuMemAllocAsync` / `cuMemFreeAsync`); false: `cuMemAlloc` / `cuMemFree`.
    pooled: bool,
}

// SAFETY: a CUcontext handle may be used from any thread (the driver API is thread-safe
// and contexts are made current per call through `enter`); the fields never change.
unsafe impl Send for Device {}
// SAFETY: as above; `Device` has no interior mutability.
unsafe impl Sync for Device {}

impl Device {
    /// The stream synchronous uploads use: waiting on it waits for those copies only,
    /// never for other work on the device.
    pub(crate) fn sync_stream(&'static self) -> Result<&'static Arc<Stream>> {
        self.sync_stream.get_or_init(|| Stream::new(self).map(Arc::new)).as_ref().map_err(Clone::clone)
    }

    fn pool_api(&self) -> Option<&'static PoolApi> {
        self.driver.pool_api.as_ref().filter(|_| self.pooled)
    }

    pub(crate) fn api(&self) -> &'static Api {
        &self.driver.api
    }

    pub(crate) fn check(&self, rc: CUresult, what: &str) -> Result<()> {
        self.driver.check(rc, what)
    }

    /// Makes this device's context current on the calling thread until the guard drops
    /// (restoring what was current before: a caller's own context is left alone).
    pub(crate) fn enter(&self) -> Result<ContextGuard> {
        let api = self.api();
        let mut current: CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check(unsafe { (api.ctx_get_current)(&mut current) }, "cuCtxGetCurrent")?;
        if current == self.ctx {
            return Ok(ContextGuard { api, pushed: false, _thread_bound: PhantomData });
        }
        // SAFETY: ctx is a retained primary context, valid for the life of the process.
        self.check(unsafe { (api.ctx_push_current)(self.ctx) }, "cuCtxPushCurrent")?;
        Ok(ContextGuard { api, pushed: true, _thread_bound: PhantomData })
    }

    /// Runs `f` with the context current; driver errors of `f` are named `what`.
    pub(crate) fn call(&self, what: &str, f: impl FnOnce(&'static Api) -> CUresult) -> Result<()> {
        let _ctx = self.enter()?;
        self.check(f(self.api()), what)
    }
}

/// Keeps a context current on one thread (not `Send`).
pub(crate) struct ContextGuard {
    api: &'static Api,
    pushed: bool,
    _thread_bound: PhantomData<*mut ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if self.pushed {
            let mut popped: CUcontext = std::ptr::null_mut();
            // SAFETY: pops exactly the context this guard pushed on this thread.
            unsafe { (self.api.ctx_pop_current)(&mut popped) };
        }
    }
}

/// A non-blocking CUDA stream (it does not synchronize with the legacy default stream).
pub(crate) struct Stream {
    pub(crate) handle: CUstream,
    pub(crate) device: &'static Device,
}

// SAFETY: stream handles may be used from any thread; the driver serializes access.
unsafe impl Send for Stream {}
// SAFETY: as above; no interior mutability.
unsafe impl Sync for Stream {}

impl Stream {
    pub(crate) fn new(device: &'static Device) -> Result<Stream> {
        let mut handle: CUstream = std::ptr::null_mut();
        // SAFETY: valid out-pointer, context current inside `call`.
        device.call("cuStreamCreate", |api| unsafe {
            (api.stream_create)(&mut handle, CU_STREAM_NON_BLOCKING)
        })?;
        Ok(Stream { handle, device })
    }

    /// Blocks until every operation queued on this stream has finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        // SAFETY: a live stream of this context.
        self.device.call("cuStreamSynchronize", |api| unsafe { (api.stream_synchronize)(self.handle) })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Work still queued completes before the driver releases the stream.
        if let Ok(_ctx) = self.device.enter() {
            // SAFETY: destroyed exactly once, by its owner.
            unsafe { (self.device.api().stream_destroy)(self.handle) };
        }
    }
}

/// An event without timing, used to order streams and to know when a copy finished.
pub(crate) struct Event {
    handle: CUevent,
    device: &'static Device,
}

// SAFETY: event handles may be used from any thread.
unsafe impl Send for Event {}
// SAFETY: as above; no interior mutability.
unsafe impl Sync for Event {}

impl Event {
    /// Creates an event and records it on `stream` (it completes when the work queued
    /// there so far has).
    pub(crate) fn record(stream: &Stream) -> Result<Event> {
        Event::record_on(stream.device, stream.handle)
    }

    /// Records an event on a stream that is not ours (a consumer's, or a default stream).
    pub(crate) fn record_on(device: &'static Device, stream: CUstream) -> Result<Event> {
        let _ctx = device.enter()?;
        let api = device.api();
        let mut handle: CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the context is current.
        device.check(unsafe { (api.event_create)(&mut handle, CU_EVENT_DISABLE_TIMING) }, "cuEventCreate")?;
        let event = Event { handle, device };
        // SAFETY: a live event and stream of the same context.
        device.check(unsafe { (api.event_record)(event.handle, stream) }, "cuEventRecord")?;
        Ok(event)
    }

    /// Whether the recorded work has finished. Never blocks.
    pub(crate) fn is_done(&self) -> Result<bool> {
        let _ctx = self.device.enter()?;
        // SAFETY: a live event.
        match unsafe { (self.device.api().event_query)(self.handle) } {
            CUDA_SUCCESS => Ok(true),
            CUDA_ERROR_NOT_READY => Ok(false),
            rc => self.device.check(rc, "cuEventQuery").map(|_| false),
        }
    }

    /// Blocks until the recorded work has finished (this event only: no device-wide
    /// synchronization).
    pub(crate) fn synchronize(&self) -> Result<()> {
        // SAFETY: a live event.
        self.device.call("cuEventSynchronize", |api| unsafe { (api.event_synchronize)(self.handle) })
    }

    /// Makes `stream` (any stream of this device's context, including the special
    /// handles `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD`) wait on the GPU for this
    /// event; the host does not block.
    pub(crate) fn make_wait(&self, stream: CUstream) -> Result<()> {
        // SAFETY: a live event; the stream handle comes from the consumer, who promises
        // (by the DLPack protocol) that it is a valid stream of this device.
        self.device
            .call("cuStreamWaitEvent", |api| unsafe { (api.stream_wait_event)(stream, self.handle, 0) })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(_ctx) = self.device.enter() {
            // SAFETY: destroyed exactly once; a pending event is released by the driver
            // once it completes.
            unsafe { (self.device.api().event_destroy)(self.handle) };
        }
    }
}

/// No consumer stream recorded: every use of the memory was on its allocation stream.
const NO_CONSUMER: usize = 0;
/// Some use is ordered by no stream we know (a legacy export, the raw pointer handed
/// out, several consumer streams, a per-thread default stream).
const UNKNOWN_CONSUMER: usize = usize::MAX;

/// The consumer state after a consumer declares `stream` (never 0 or `usize::MAX`).
fn merge_consumer(current: usize, stream: usize) -> usize {
    if current == NO_CONSUMER || current == stream {
        stream
    } else {
        UNKNOWN_CONSUMER
    }
}

/// Device memory, freed exactly once by `Drop` (on any thread). Where the device
/// supports it, it comes from the default memory pool, stream-ordered: allocated on the
/// stream that fills it, freed on the stream of its consumer (after the consumer's
/// queued work, without a host wait), else on the allocation stream after waiting for
/// the context when some use is on an unknown stream. Otherwise `cuMemAlloc` /
/// `cuMemFree` (which waits for the device).
pub(crate) struct DeviceMemory {
    pub(crate) ptr: CUdeviceptr,
    pub(crate) bytes: usize,
    pub(crate) device: &'static Device,
    /// The stream a pooled allocation was made on (None: `cuMemAlloc`).
    alloc_stream: Option<Arc<Stream>>,
    /// `NO_CONSUMER`, `UNKNOWN_CONSUMER` or the one consumer stream's handle.
    consumer: AtomicUsize,
}

// SAFETY: a device pointer is plain data; freeing it makes the context current itself.
unsafe impl Send for DeviceMemory {}
// SAFETY: as above; the only interior mutability is an atomic.
unsafe impl Sync for DeviceMemory {}

impl DeviceMemory {
    /// Allocates `bytes` (> 0) for work queued on `stream`: only `stream` may use the
    /// memory until work queued there after this call has completed (or another stream
    /// waits for it), as with `cuMemAllocAsync`.
    pub(crate) fn alloc(stream: &Arc<Stream>, bytes: usize) -> Result<DeviceMemory> {
        let device = stream.device;
        let _ctx = device.enter()?;
        let mut ptr: CUdeviceptr = 0;
        let consumer = AtomicUsize::new(NO_CONSUMER);
        if let Some(pool) = device.pool_api() {
            // SAFETY: valid out-pointer; a live stream of this context; bytes > 0.
            if unsafe { (pool.mem_alloc_async)(&mut ptr, bytes, stream.handle) } == CUDA_SUCCESS {
                return Ok(DeviceMemory { ptr, bytes, device, alloc_stream: Some(stream.clone()), consumer });
            }
        }
        // SAFETY: valid out-pointer; bytes > 0 (callers never allocate empty buffers).
        device.check(unsafe { (device.api().mem_alloc)(&mut ptr, bytes) }, "cuMemAlloc")?;
        Ok(DeviceMemory { ptr, bytes, device, alloc_stream: None, consumer })
    }

    /// Records that a consumer uses the memory on `stream`, ordered after the upload.
    /// The per-thread default stream names a different stream on the thread that frees
    /// the memory, so it counts as unknown.
    pub(crate) fn note_consumer(&self, stream: CUstream) {
        let s = stream as usize;
        if s == NO_CONSUMER || s == UNKNOWN_CONSUMER || stream == CU_STREAM_PER_THREAD {
            self.note_unknown_consumer();
            return;
        }
        let _ = self
            .consumer
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| Some(merge_consumer(cur, s)));
    }

    /// Records a use on a stream we cannot know: the final free waits for the context.
    pub(crate) fn note_unknown_consumer(&self) {
        self.consumer.store(UNKNOWN_CONSUMER, Ordering::Release);
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // If the context cannot be made current the device is unusable: leak.
        let Ok(_ctx) = self.device.enter() else {
            return;
        };
        let api = self.device.api();
        let (Some(alloc_stream), Some(pool)) = (&self.alloc_stream, self.device.pool_api()) else {
            // cuMemFree waits for work still using the memory, so a consumer that released
            // the tensor with kernels in flight on its own stream stays correct.
            // SAFETY: allocated by cuMemAlloc and freed exactly once, here.
            unsafe { (api.mem_free)(self.ptr) };
            return;
        };
        let consumer = *self.consumer.get_mut();
        if consumer != NO_CONSUMER && consumer != UNKNOWN_CONSUMER {
            // Every use is on the consumer's stream (ordered after the upload by an event
            // wait, or the upload had finished): free after them, on the GPU.
            // SAFETY: pooled memory freed exactly once; the consumer promised (DLPack) a
            // valid stream of this device. On failure the fallback below frees it.
            if unsafe { (pool.mem_free_async)(self.ptr, consumer as CUstream) } == CUDA_SUCCESS {
                return;
            }
        }
        if consumer != NO_CONSUMER {
            // Some use may be queued on a stream we do not know: wait for all the
            // context's work first, as cuMemFree does.
            // SAFETY: the context is current.
            unsafe { (api.ctx_synchronize)() };
        }
        // Otherwise the only use was the upload, queued on the allocation stream.
        // SAFETY: pooled memory freed exactly once; the allocation stream is alive (held
        // here). If this fails the memory is leaked, never freed twice.
        unsafe { (pool.mem_free_async)(self.ptr, alloc_stream.handle) };
    }
}

/// Page-locked host memory from `cuMemHostAlloc` (fast, truly asynchronous copies).
pub(crate) struct PinnedMemory {
    pub(crate) ptr: *mut u8,
    pub(crate) bytes: usize,
    device: &'static Device,
}

// SAFETY: the buffer is plain host memory owned by this value; access is coordinated by
// its owner (the stager's ring, under its mutex).
unsafe impl Send for PinnedMemory {}
// SAFETY: as above.
unsafe impl Sync for PinnedMemory {}

impl PinnedMemory {
    pub(crate) fn alloc(device: &'static Device, bytes: usize) -> Result<PinnedMemory> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; bytes > 0.
        device.call("cuMemHostAlloc", |api| unsafe { (api.mem_host_alloc)(&mut ptr, bytes, 0) })?;
        Ok(PinnedMemory { ptr: ptr.cast(), bytes, device })
    }
}

impl Drop for PinnedMemory {
    fn drop(&mut self) {
        if let Ok(_ctx) = self.device.enter() {
            // SAFETY: allocated by cuMemHostAlloc and freed exactly once; the owner has
            // waited for every copy reading from it.
            unsafe { (self.device.api().mem_free_host)(self.ptr.cast()) };
        }
    }
}

/// Reads `bytes` of device memory at `src` back into `dst` (blocking; used by tests and
/// tools, not on hot paths).
pub(crate) fn copy_to_host(device: &'static Device, src: CUdeviceptr, dst: &mut [u8]) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    let stream = Stream::new(device)?;
    // SAFETY: dst is writable for its length; src holds at least that many bytes
    // (the caller's contract); the copy completes before dst is released (synchronize).
    device.call("cuMemcpyDtoHAsync", |api| unsafe {
        (api.memcpy_dtoh_async)(dst.as_mut_ptr().cast(), src, dst.len(), stream.handle)
    })?;
    stream.synchronize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_consumer_stream_is_kept_and_a_second_makes_it_unknown() {
        let (a, b) = (0x1000usize, 0x2000usize);
        assert_eq!(merge_consumer(NO_CONSUMER, a), a);
        assert_eq!(merge_consumer(a, a), a);
        assert_eq!(merge_consumer(a, b), UNKNOWN_CONSUMER);
        assert_eq!(merge_consumer(UNKNOWN_CONSUMER, a), UNKNOWN_CONSUMER);
        assert_eq!(merge_consumer(NO_CONSUMER, CU_STREAM_LEGACY as usize), CU_STREAM_LEGACY as usize);
    }
}
