use std::path::Path;

use wedge_runtime_config::local_run::LOCAL_RUN_ACTION;
use wedge_shim::runner::{self, protocol::RUNNER_ARG0};
use wedge_shim::RUNTIME_ID;

fn main() {
    let invoked_as = std::env::args_os().next().unwrap_or_default();
    if Path::new(&invoked_as).file_name() == Some(RUNNER_ARG0.as_ref()) {
        runner::main();
    }

    let args: Vec<_> = std::env::args_os().skip(1).take(3).collect();
    if let [action, bundle] = &args[..] {
        if action == LOCAL_RUN_ACTION {
            run_local(Path::new(bundle));
        }
    }

    // One thread serves every container of the shim: the work is waiting on sockets, and
    // each thread would cost memory on every node, per pod.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(wedge_shim::shim::run())
                .map_err(|err| err.to_string())
        });
    if let Err(err) = result {
        // containerd shows this text in its error for start and delete.
        eprintln!("{RUNTIME_ID}: {err}");
        std::process::exit(1);
    }
}

/// `wedge run`'s container: exits with the module's exit status.
fn run_local(bundle: &Path) -> ! {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(wedge_shim::local_run::run(bundle))
                .map_err(|err| err.to_string())
        });
    match result {
        Ok(status) => std::process::exit(i32::try_from(status).unwrap_or(255)),
        Err(err) => {
            eprintln!("wedge run: {err}");
            std::process::exit(125);
        }
    }
}
