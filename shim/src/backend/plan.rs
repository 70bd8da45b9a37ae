//! Which back end a container needs, decided the way the node would run it: a wasm file at
//! the entrypoint runs as wasm; a Linux program there goes to runc, whatever the image's
//! layers hold; with nothing at the entrypoint, a wasm layer of the image runs as wasm, and
//! otherwise runc gets the container (and reports the missing entrypoint itself).

use std::future::Future;
use std::os::fd::OwnedFd;

use tracing::info;

use crate::content::WasmLayer;
use crate::error::Result;
use crate::image::EntrypointFile;
use crate::runner::protocol::ModuleSource;

/// What Create makes.
pub enum Plan {
    Wasm(WasmModule),
    Native,
}

/// Where a wasm container's module comes from.
pub struct WasmModule {
    pub source: ModuleSource,
    /// The bytes of a module from an image layer, for the runner to read.
    pub fd: Option<OwnedFd>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Wasm(module) => write!(f, "Wasm({:?})", module.source),
            Plan::Native => f.write_str("Native"),
        }
    }
}

/// The plan for a container whose entrypoint is `entrypoint` (None: the spec names none);
/// `image_layer` is asked only when the entrypoint leaves the question open.
pub async fn plan<L>(entrypoint: Option<EntrypointFile>, image_layer: L) -> Result<Plan>
where
    L: Future<Output = Result<Option<WasmLayer>>>,
{
    match entrypoint {
        Some(EntrypointFile::Wasm { path }) => {
            return Ok(Plan::Wasm(WasmModule {
                source: ModuleSource::Rootfs { path },
                fd: None,
            }))
        }
        Some(EntrypointFile::Native { .. }) => return Ok(Plan::Native),
        Some(EntrypointFile::NotAProgram(err)) => return Err(err),
        Some(EntrypointFile::Missing(_)) | None => {}
    }
    match image_layer.await? {
        Some(layer) => {
            info!(digest = %layer.digest, media_type = %layer.media_type,
                  size = layer.size, "module from image layer");
            Ok(Plan::Wasm(WasmModule {
                source: ModuleSource::Layer {
                    digest: layer.digest,
                },
                fd: Some(layer.module),
            }))
        }
        None => Ok(Plan::Native),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::error::Error;

    fn not_found(path: &str) -> Error {
        Error::EntrypointNotFound {
            path: path.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    fn layer() -> WasmLayer {
        WasmLayer {
            digest: "sha256:00".into(),
            media_type: "application/wasm".into(),
            size: 8,
            module: crate::runner::launch::module_fd::sealed_memfd(b"\0asm\x01\0\0\0").unwrap(),
        }
    }

    /// Plans with an image that has `layer`, and says whether the image was asked.
    fn plan_with(
        entrypoint: Option<EntrypointFile>,
        layer: Option<WasmLayer>,
    ) -> (Result<Plan>, bool) {
        let asked = Cell::new(false);
        let image = async {
            asked.set(true);
            Ok(layer)
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let planned = runtime.block_on(plan(entrypoint, image));
        (planned, asked.get())
    }

    #[test]
    fn a_wasm_entrypoint_runs_as_wasm_without_asking_the_image() {
        let (planned, asked) = plan_with(
            Some(EntrypointFile::Wasm {
                path: "/app.wasm".into(),
            }),
            Some(layer()),
        );
        assert!(
            matches!(planned, Ok(Plan::Wasm(WasmModule { source: ModuleSource::Rootfs { ref path }, fd: None })) if path == "/app.wasm"),
            "{planned:?}"
        );
        assert!(!asked);
    }

    #[test]
    fn a_linux_program_goes_to_runc_even_with_a_wasm_layer() {
        let (planned, asked) = plan_with(
            Some(EntrypointFile::Native {
                path: "/bin/sh".into(),
            }),
            Some(layer()),
        );
        assert!(matches!(planned, Ok(Plan::Native)), "{planned:?}");
        assert!(!asked);
    }

    #[test]
    fn a_missing_entrypoint_takes_the_image_s_wasm_layer() {
        let (planned, asked) = plan_with(
            Some(EntrypointFile::Missing(not_found("/app.wasm"))),
            Some(layer()),
        );
        assert!(
            matches!(
                planned,
                Ok(Plan::Wasm(WasmModule {
                    source: ModuleSource::Layer { .. },
                    fd: Some(_)
                }))
            ),
            "{planned:?}"
        );
        assert!(asked);
        let (planned, _) = plan_with(None, Some(layer()));
        assert!(matches!(planned, Ok(Plan::Wasm(_))), "{planned:?}");
    }

    #[test]
    fn without_entrypoint_or_layer_runc_gets_the_container() {
        let (planned, asked) = plan_with(Some(EntrypointFile::Missing(not_found("/x"))), None);
        assert!(matches!(planned, Ok(Plan::Native)), "{planned:?}");
        assert!(asked);
    }

    #[test]
    fn a_special_file_at_the_entrypoint_is_refused() {
        let (planned, asked) = plan_with(
            Some(EntrypointFile::NotAProgram(Error::EntrypointNotRegular {
                path: "/app.wasm".into(),
                kind: "directory",
            })),
            Some(layer()),
        );
        assert!(
            matches!(planned, Err(Error::EntrypointNotRegular { .. })),
            "{planned:?}"
        );
        assert!(!asked);
    }
}
