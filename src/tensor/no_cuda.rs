//! CUDA placement in a build without the `cuda` feature: loading a CUDA tensor handler
//! fails with a clear error; nothing else here is ever reached.

use super::buffers::{HostBuffer, Lease};
use crate::dlpack::DLDevice;
use crate::error::{Error, ErrorKind, Result};
use pyo3::prelude::*;
use std::ffi::c_void;
use std::sync::Arc;

pub(crate) enum Placement {}
pub(crate) enum DeviceSet {}

impl Placement {
    pub(crate) fn new(_ordinal: i32) -> Result<Placement> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "this build of pyscheduler has no CUDA support (feature `cuda`)",
        ))
    }
    pub(crate) fn alloc_set(&self, _batch_bytes: &[usize]) -> Result<(Vec<HostBuffer>, DeviceSet)> {
        match *self {}
    }
    pub(crate) fn upload(&self, _lease: &Lease, _rows: usize) -> Result<()> {
        match *self {}
    }
    pub(crate) fn device_ptr(&self, _lease: &Lease, _k: usize) -> *mut u8 {
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

pub(crate) fn order_consumer(_lease: &Lease, _stream: Option<i64>) -> PyResult<()> {
    Ok(())
}
