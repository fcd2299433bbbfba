//! The HA demo: `scripts/ha-demo.sh --check` runs the docker-compose
//! topology as processes (PostgreSQL + 3 Koine), kills an instance and
//! shows clients continuing; `docker-compose.yml` is checked for the same
//! topology (no Docker engine here, so its structure is validated).

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_demo_script_survives_an_instance_kill() {
    // Three consecutive free ports.
    let base = loop {
        let p = crate::harness::free_port();
        if p < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let out = tokio::process::Command::new("scripts/ha-demo.sh")
        .arg("--check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KOINE_BIN", env!("CARGO_BIN_EXE_koine"))
        .env("KOINE_HA_BASE_PORT", base.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: writes, reads and watches cross instances"));
    assert!(stdout.contains("clients continued on koine-2 and koine-3 (20/20 writes)"));
}

#[test]
fn docker_compose_describes_the_ha_topology() {
    let check = r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
s = doc["services"]
koines = [n for n in s if n.startswith("koine-")]
k3s = [n for n in s if n.startswith("k3s-")]
assert "postgres" in s, "no postgres"
assert len(koines) == 3, koines
assert len(k3s) >= 2, k3s
for n in koines:
    env = s[n]["environment"]
    assert env["KOINE_ENDPOINT"].startswith("postgres://"), env
    assert "@postgres:5432/" in env["KOINE_ENDPOINT"], env
    assert env["KOINE_LISTEN_ADDRESS"].endswith(":2379"), env
    assert "postgres" in s[n]["depends_on"], n
for n in k3s:
    cmd = " ".join(s[n]["command"])
    assert cmd.startswith("server"), cmd
    ep = [a for a in s[n]["command"] if a.startswith("--datastore-endpoint=")][0]
    urls = ep.split("=", 1)[1].split(",")
    assert sorted(u.split("//")[1].split(":")[0] for u in urls) == sorted(koines), urls
print("ok")
"#;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    let out = Command::new("python3")
        .args(["-c", check, path])
        .output()
        .expect("python3 (with PyYAML) is needed to check docker-compose.yml");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
