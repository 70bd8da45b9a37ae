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
    if let Err(err) = on_one_thread(wedge_shim::shim::run()) {
        // containerd shows this text in its error for start and delete.
        eprintln!("{RUNTIME_ID}: {err}");
        std::process::exit(1);
    }
}

/// `wedge run`'s container: exits with the module's exit status.
fn run_local(bundle: &Path) -> ! {
    match on_one_thread(wedge_shim::local_run::run(bundle)) {
        Ok(status) => std::process::exit(i32::try_from(status).unwrap_or(255)),
        Err(err) => {
            eprintln!("wedge run: {err}");
            std::process::exit(125);
        }
    }
}

/// Runs `future` to its end on a current-thread runtime; errors as text.
fn on_one_thread<T, E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?
        .block_on(future)
        .map_err(|err| err.to_string())
}
