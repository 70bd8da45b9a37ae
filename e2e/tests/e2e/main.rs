//! The end-to-end suites, one test binary: each module starts its own private containerd.
//! One binary rather than one per suite keeps a cold build small and quick to link; a suite
//! is chosen with a name filter (`cargo test -p wedge-e2e --test e2e -- ctr_run::`).

mod bad_input;
mod containment;
mod cri_confinement;
mod cri_engine;
mod cri_network;
mod cri_pods;
mod ctr_run;
mod faults;
mod installer_image;
mod local_run;
mod node_install;
mod observability;
mod systemd_guest;
mod wasm_images;
