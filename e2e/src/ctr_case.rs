//! One `ctr`-level test's setting: a private containerd and a work directory for the images
//! it builds, with the steps such tests share.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::{images, Containerd};

pub struct CtrCase {
    pub containerd: Containerd,
    pub work: tempfile::TempDir,
}

impl CtrCase {
    pub fn new() -> Result<Self> {
        Ok(CtrCase {
            containerd: Containerd::start()?,
            work: tempfile::tempdir()?,
        })
    }

    /// Builds and imports an image of `module`; returns its reference.
    pub fn image(&self, name: &str, module: &[u8]) -> Result<String> {
        let (archive, reference) = images::wasm_image(self.work.path(), name, module)?;
        self.containerd.import(&archive)?;
        Ok(reference)
    }

    /// Waits until `ctr tasks ls` shows task `id` in `status` (RUNNING, STOPPED…).
    pub fn wait_for_status(&self, id: &str, status: &str) -> Result<()> {
        wait_for_status(&self.containerd, id, status)
    }

    /// Fails unless the test's containers left nothing behind.
    pub fn finish(self) -> Result<()> {
        self.containerd.assert_clean()
    }
}

/// Waits until `ctr tasks ls` on `containerd` shows task `id` in `status`.
pub fn wait_for_status(containerd: &Containerd, id: &str, status: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks =
            String::from_utf8_lossy(&containerd.ctr_ok(&["tasks", "ls"])?.stdout).into_owned();
        let current = tasks
            .lines()
            .find(|line| line.starts_with(id))
            .and_then(|line| line.split_whitespace().nth(2))
            .map(str::to_string);
        if current.as_deref() == Some(status) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "task {id} is {current:?}, not {status}; tasks:\n{tasks}\ncontainerd log:\n{}",
            containerd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
