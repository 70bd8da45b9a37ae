//! The Task API one shim serves: containerd's requests (`api`) over a registry of containers
//! (`tasks`), each with a lifecycle (`lifecycle`) and a back end (`crate::backend`) that
//! Create chose (`create`); exec processes (`exec`); events to containerd (`events`).

mod api;
mod container;
mod create;
pub mod events;
mod exec;
pub mod lifecycle;
mod tasks;

#[cfg(test)]
mod tests;

pub use api::TaskService;
