//! CUDA placement in a build without the `cuda` feature: loading a CUDA tensor handler
//! fails with a clear error; nothing else here is ever reached. The same items as
//! `cuda.rs`, below `buffers` like it. May call: `crate::dlpack`, `crate::error`.

use crate::dlpack::DLDevice;
use crate::error::{Error, ErrorKind, Result};
use pyo3::prelude::*;
use std::ffi::c_void;
use std::sync::Arc;

/// A set's pinned host buffer for one input (never made here).
pub(crate) type PinnedHost = (*mut u8, Box<dyn Send + Sync>);

pub(crate) enum Placement {}
pub(crate) enum DeviceSet {}

impl Placement {
    pub(crate) fn new(_ordinal: i32) -> Result<Placement> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "this build of pyscheduler has no CUDA support (feature `cuda`)",
        ))
    }
    pub(crate) fn alloc_set(&self, _batch_bytes: &[usize]) -> Result<(Vec<PinnedHost>, DeviceSet)> {
        match *self {}
    }
    /// # Safety
    /// As the `cuda` feature's (never reached here).
    pub(crate) unsafe fn upload(&self, _set: Option<&DeviceSet>, _host: &[(*const u8, usize)]) -> Result<()> {
        match *self {}
    }
    pub(crate) fn device_ptr(&self, _set: Option<&DeviceSet>, _k: usize) -> *mut u8 {
        match *self {}
    }
    pub(crate) fn enter(&self) -> Result<()> {
        match *self {}
    }
    pub(crate) fn dl_device(&self) -> DLDevice {
        match *self {}
    }
    pub(crate) fn stream_handle(&self) -> usize {
        match *self {}
    }
    pub(crate) fn copy_to_host(
        self: &Arc<Self>,
        _src: *const c_void,
        _bytes: usize,
    ) -> Result<(*const u8, Box<dyn Send>)> {
        match **self {}
    }
}

impl DeviceSet {
    pub(crate) fn after_use(&self) {
        match *self {}
    }
    pub(crate) fn before_reuse(&self) -> Result<()> {
        match *self {}
    }
}

pub(crate) fn order_consumer(_set: Option<&DeviceSet>, _stream: Option<i64>) -> PyResult<()> {
    Ok(())
}
