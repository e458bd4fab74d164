//! Threads the process cannot live without: the pipeline stage and the hub shards.
//!
//! Such a thread that panics or fails must not leave the process half-alive (a dead
//! shard used to drop its connections silently and fail 1/N of later upgrades with
//! "hub is stopped"). [`spawn`] runs the thread's body and, if it panics or returns an
//! error, calls the thread's [`OnDeath`]: in the binaries, [`exit_process`], which logs
//! and exits with status 70 so that a supervisor (systemd, Kubernetes) restarts the
//! process and clients resume where they were. Restarting the thread in place was the
//! alternative: the state it owned (connections, subscriptions, a half-routed batch)
//! is gone either way, and a fresh process is the one state known to be whole.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What to do when a critical thread dies: gets the thread's name and why.
pub type OnDeath = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The exit status of a process whose critical thread died (EX_SOFTWARE).
pub const EXIT_STATUS: i32 = 70;

/// Logs the death and exits the process with [`EXIT_STATUS`].
pub fn exit_process() -> OnDeath {
    Arc::new(|thread, why| {
        tracing::error!(
            thread,
            why,
            "a critical thread died; exiting so that a supervisor restarts the process"
        );
        eprintln!("signalcast: thread {thread} died ({why}); exiting with status {EXIT_STATUS}");
        std::process::exit(EXIT_STATUS);
    })
}

/// Spawns `body` on a thread named `name`; a panic or an `Err` calls `on_death`.
pub fn spawn<F>(name: String, on_death: OnDeath, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    let thread = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        // AssertUnwindSafe: nothing the body owns is looked at after a panic; the
        // process is told to go.
        let why = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(payload) => match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
                (Some(s), _) => format!("panicked: {s}"),
                (_, Some(s)) => format!("panicked: {s}"),
                _ => "panicked".to_owned(),
            },
        };
        on_death(&thread, &why);
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Deaths = Arc<Mutex<Vec<(String, String)>>>;

    fn recorder() -> (OnDeath, Deaths) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        (Arc::new(move |t: &str, w: &str| log.lock().unwrap().push((t.to_owned(), w.to_owned()))), seen)
    }

    #[test]
    fn a_panic_or_an_error_is_a_death_and_a_return_is_not() {
        let (on_death, seen) = recorder();
        spawn("ok".into(), Arc::clone(&on_death), || Ok(())).unwrap().join().unwrap();
        spawn("fails".into(), Arc::clone(&on_death), || Err("poll failed".into())).unwrap().join().unwrap();
        spawn("panics".into(), on_death, || panic!("index out of bounds")).unwrap().join().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("fails".to_owned(), "poll failed".to_owned()),
                ("panics".to_owned(), "panicked: index out of bounds".to_owned())
            ]
        );
    }
}
