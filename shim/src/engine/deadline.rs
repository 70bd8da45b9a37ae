//! Wall-clock deadlines through epoch interruption: a ticker thread advances the engine's
//! epoch, and a store whose deadline (in ticks) has passed traps at its next loop header or
//! function entry — even a module spinning without calling the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{AsContextMut, Engine};

/// Deadline resolution. Finer costs wake-ups for nothing: deadlines are seconds.
pub const TICK: Duration = Duration::from_millis(10);

/// Stores without a deadline never reach this many ticks.
const NEVER: u64 = u64::MAX / 2;

/// Advances one engine's epoch every [`TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wedge-epoch".into())
            .stack_size(64 << 10)
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Gives `store` its deadline (none: never interrupted) and its fuel.
pub fn arm<T: 'static>(
    mut store: impl AsContextMut<Data = T>,
    deadline: Option<Duration>,
    fuel: Option<u64>,
) -> wasmtime::Result<()> {
    let mut store = store.as_context_mut();
    match deadline {
        Some(deadline) => {
            store.set_epoch_deadline(ticks(deadline));
            store.epoch_deadline_trap();
        }
        None => store.set_epoch_deadline(NEVER),
    }
    if let Some(fuel) = fuel {
        store.set_fuel(fuel)?;
    }
    Ok(())
}

fn ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_millis().div_ceil(TICK.as_millis());
    u64::try_from(ticks).unwrap_or(NEVER).clamp(1, NEVER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_ticks() {
        assert_eq!(ticks(Duration::from_millis(1)), 1);
        assert_eq!(ticks(Duration::from_millis(10)), 1);
        assert_eq!(ticks(Duration::from_millis(11)), 2);
        assert_eq!(ticks(Duration::from_secs(2)), 200);
        assert_eq!(ticks(Duration::MAX), NEVER);
    }
}
