//! Images whose one layer *is* the wasm binary, in two forms:
//!
//! - **artifact**: the CNCF wasm OCI artifact — config `application/vnd.wasm.config.v0+json`
//!   (architecture `wasm`, os `wasip1`/`wasip2`, the layer digests and, for a component, its
//!   imports and exports), layer `application/wasm`. What registries and wasm tooling share;
//!   containerd runs it through CRI.
//! - **layer**: an ordinary OCI image config (architecture `wasm`) with the module as a layer
//!   of a wasm media type, which `ctr run` accepts too.
//!
//! Both configs carry the OCI `config` block (Entrypoint, Cmd, Env, WorkingDir) so that
//! containerd builds `process.args` for a pod that sets no command.

use oci_spec::image::{
    Arch, ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder,
    RootFsBuilder,
};
use serde_json::json;

use crate::image::{
    layer_tar, normalize_reference, process_config, Blobs, ImageContent, ImageError, LayerFile,
};

pub use wedge_runtime_config::wasm_image::{
    COMPONENT_LAYER, MODULE_LAYER, WASM_ARTIFACT_CONFIG, WASM_ARTIFACT_LAYER,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleForm {
    Artifact,
    /// The layer media type; None picks one by the binary's kind.
    Layer(Option<String>),
}

#[derive(Debug, Clone)]
pub struct ModuleImageSpec {
    pub reference: String,
    pub module: Vec<u8>,
    pub form: ModuleForm,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// Files the module sees as its root filesystem, in a tar layer before the module's
    /// (layer form only; containerd unpacks it and leaves the wasm layer to the runtime).
    pub files: Vec<LayerFile>,
}

/// What the tooling records about a component's interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentInterface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// A WASI 0.3 entry point: `wasi:cli/run@0.3.x` or `wasi:http/handler@0.3.x`.
fn is_wasi_0_3_entry(export: &str) -> bool {
    ["wasi:cli/run@0.3.", "wasi:http/handler@0.3."]
        .iter()
        .any(|prefix| export.starts_with(prefix))
}

pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[6..8] == [1, 0]
}

pub fn module_image(spec: &ModuleImageSpec) -> Result<ImageContent, ImageError> {
    let (reference, tag) = normalize_reference(&spec.reference)?;
    let component = is_component(&spec.module);
    // Read once: it names the OS here, and the artifact form records it. Only the artifact
    // form needs it to parse; the layer form leaves a broken component to the runtime.
    let interface = component.then(|| component_interface(&spec.module));
    let os = match &interface {
        None => "wasip1",
        Some(Ok(interface)) if interface.exports.iter().any(|name| is_wasi_0_3_entry(name)) => {
            "wasip3"
        }
        Some(_) => "wasip2",
    };
    let mut blobs = Blobs::default();
    let layer_media_type = match &spec.form {
        ModuleForm::Artifact => WASM_ARTIFACT_LAYER.to_string(),
        ModuleForm::Layer(Some(media_type)) => media_type.clone(),
        ModuleForm::Layer(None) if component => COMPONENT_LAYER.to_string(),
        ModuleForm::Layer(None) => MODULE_LAYER.to_string(),
    };
    if spec.form == ModuleForm::Artifact && !spec.files.is_empty() {
        return Err(ImageError::FilesInArtifact);
    }
    let files_layer = if spec.files.is_empty() {
        None
    } else {
        let digest = blobs.add(layer_tar(&spec.files)?);
        Some((blobs.descriptor(MediaType::ImageLayer, &digest)?, digest))
    };
    let layer_digest = blobs.add(spec.module.clone());
    let layer = blobs.descriptor(MediaType::from(layer_media_type.as_str()), &layer_digest)?;
    let process = process_config(&spec.entrypoint, &spec.cmd, &spec.env, &spec.workdir)?;

    let (config_media_type, config_bytes) = match spec.form {
        ModuleForm::Artifact => {
            let mut config = json!({
                "architecture": "wasm",
                "os": os,
                "layerDigests": [format!("sha256:{layer_digest}")],
                "config": process,
            });
            if let Some(interface) = interface {
                let interface = interface?;
                config["component"] = json!({
                    "imports": interface.imports,
                    "exports": interface.exports,
                });
            }
            (
                MediaType::from(WASM_ARTIFACT_CONFIG),
                serde_json::to_vec(&config)?,
            )
        }
        ModuleForm::Layer(_) => {
            let config = ImageConfigurationBuilder::default()
                .architecture(Arch::Wasm)
                .os(Os::from(os))
                .config(process)
                // Only the files' layer is a filesystem diff (uncompressed: its diff id is its
                // digest); without one containerd unpacks an empty root.
                .rootfs(
                    RootFsBuilder::default()
                        .typ("layers")
                        .diff_ids(
                            files_layer
                                .iter()
                                .map(|(_, digest)| format!("sha256:{digest}"))
                                .collect::<Vec<String>>(),
                        )
                        .build()?,
                )
                .build()?;
            (MediaType::ImageConfig, serde_json::to_vec(&config)?)
        }
    };
    let config_digest = blobs.add(config_bytes);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(blobs.descriptor(config_media_type, &config_digest)?)
        .layers(
            files_layer
                .into_iter()
                .map(|(descriptor, _)| descriptor)
                .chain([layer])
                .collect::<Vec<_>>(),
        )
        .build()?;
    let manifest_digest = blobs.add(serde_json::to_vec(&manifest)?);
    // The manifest is the image's top: containerd then takes it as is, whatever platform
    // the node has.
    let mut top = blobs.descriptor(MediaType::ImageManifest, &manifest_digest)?;
    top.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::Wasm)
            .os(Os::from(os))
            .build()?,
    ));
    Ok(ImageContent {
        reference,
        tag,
        blobs,
        top,
        layer_digest: format!("sha256:{layer_digest}"),
    })
}

/// The names a component imports and exports at its top level.
pub fn component_interface(bytes: &[u8]) -> Result<ComponentInterface, ImageError> {
    let mut interface = ComponentInterface::default();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|err| ImageError::Wasm(err.to_string()))?;
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports {
                    let import = import.map_err(|err| ImageError::Wasm(err.to_string()))?;
                    interface.imports.push(import.name.name.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    let export = export.map_err(|err| ImageError::Wasm(err.to_string()))?;
                    interface.exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(interface)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT: &str = r#"(component
        (import "wasi:cli/environment@0.2.0" (instance))
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (export "run" (func $f)))"#;

    fn spec(module: Vec<u8>, form: ModuleForm) -> ModuleImageSpec {
        ModuleImageSpec {
            reference: "registry.local/wasm/app:v1".into(),
            module,
            form,
            entrypoint: vec!["/app.wasm".into()],
            cmd: vec![],
            env: vec![],
            workdir: None,
            files: vec![],
        }
    }

    fn blob(content: &ImageContent, digest: &str) -> serde_json::Value {
        let bytes = content
            .blobs
            .get(digest.trim_start_matches("sha256:"))
            .unwrap();
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn artifact_of_a_component_records_its_interface() {
        let bytes = wat::parse_str(COMPONENT).unwrap();
        let content = module_image(&spec(bytes.clone(), ModuleForm::Artifact)).unwrap();
        let manifest = blob(&content, content.top.digest().as_ref());
        assert_eq!(manifest["config"]["mediaType"], WASM_ARTIFACT_CONFIG);
        assert_eq!(manifest["layers"][0]["mediaType"], WASM_ARTIFACT_LAYER);
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        let config = blob(&content, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["layerDigests"][0], content.layer_digest.as_str());
        assert_eq!(config["component"]["exports"][0], "run");
        assert_eq!(
            config["component"]["imports"][0],
            "wasi:cli/environment@0.2.0"
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/app.wasm");
        let layer = content
            .blobs
            .get(content.layer_digest.trim_start_matches("sha256:"));
        assert_eq!(layer, Some(&bytes[..]));

        // A component with a WASI 0.3 entry point is labelled wasip3.
        let p3 = wat::parse_str(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $run (export "run" (func $f)))
                (export "wasi:cli/run@0.3.0" (instance $run)))"#,
        )
        .unwrap();
        let content = module_image(&spec(p3, ModuleForm::Artifact)).unwrap();
        let manifest = blob(&content, content.top.digest().as_ref());
        let config = blob(&content, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["os"], "wasip3");
    }

    #[test]
    fn layer_form_uses_an_oci_config_and_the_chosen_media_type() {
        let module = wat::parse_str("(module)").unwrap();
        let content = module_image(&spec(module.clone(), ModuleForm::Layer(None))).unwrap();
        let manifest = blob(&content, content.top.digest().as_ref());
        assert_eq!(manifest["layers"][0]["mediaType"], MODULE_LAYER);
        let config = blob(&content, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 0);

        let custom = ModuleForm::Layer(Some("application/vnd.wasm.content.layer.v1+wasm".into()));
        let content = module_image(&spec(module, custom)).unwrap();
        let manifest = blob(&content, content.top.digest().as_ref());
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.wasm.content.layer.v1+wasm"
        );
    }

    #[test]
    fn files_beside_the_module_are_a_filesystem_layer_before_it() {
        let module = wat::parse_str("(module)").unwrap();
        let mut with_files = spec(module.clone(), ModuleForm::Layer(None));
        with_files.files = vec![LayerFile {
            path: "/data/a.txt".into(),
            contents: b"a".to_vec(),
            mode: 0o644,
        }];
        let content = module_image(&with_files).unwrap();
        let manifest = blob(&content, content.top.digest().as_ref());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(layers[1]["mediaType"], MODULE_LAYER);
        assert_eq!(content.layer_digest, layers[1]["digest"]);
        let config = blob(&content, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["rootfs"]["diff_ids"][0], layers[0]["digest"]);

        with_files.form = ModuleForm::Artifact;
        assert!(matches!(
            module_image(&with_files),
            Err(ImageError::FilesInArtifact)
        ));
    }
}
