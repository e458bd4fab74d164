//! What the sidecar's command line prints never carries a secret from the environment.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn help_never_prints_the_database_password_or_the_tokens_from_the_environment() {
    let secrets = [
        ("SIGNALCAST_ACCOUNTS_DATABASE_URL", "postgres://signalcast:hunter2-db@db.internal:5432/signalcast"),
        ("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", "hunter2-admin-token-0123456789"),
        ("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", "hunter2-gateway-token-0123456789"),
        ("SIGNALCAST_ACCOUNTS_KEK", "hunter2-key-encryption-key-0123456789"),
    ];
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["bootstrap", "--help"],
        &["seed", "--help"],
        &["migrate", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
            .args(args)
            .envs(secrets)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("SIGNALCAST_ACCOUNTS_DATABASE_URL"),
            "{args:?}: the variable is still named\n{text}"
        );
        assert!(!text.contains("hunter2"), "{args:?} printed a secret:\n{text}");
    }
}
