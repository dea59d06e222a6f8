use std::time::Duration;

use super::*;

fn step(index: usize, image: &str) -> StepSpec {
    StepSpec {
        job: 1,
        service: "web".into(),
        image: image.into(),
        commands: vec!["true".into()],
        workspace: "/unused".into(),
        workdir: ".".into(),
        network: false,
        user: "1000:1000".into(),
        volumes: BTreeMap::new(),
        env: Vec::new(),
        limits: Limits {
            memory_bytes: 1 << 30,
            nano_cpus: 1_000_000_000,
            pids: 64,
        },
        reserve: false,
        timeout: Duration::from_secs(60),
        index,
        artifacts: Vec::new(),
    }
}

#[test]
fn consecutive_steps_that_run_alike_share_a_container_and_others_do_not() {
    let steps = [step(0, "go"), step(1, "go"), step(2, "node"), step(3, "go")];
    let groups: Vec<Vec<usize>> = step_groups(&steps)
        .iter()
        .map(|g| g.iter().map(|s| s.index).collect())
        .collect();
    assert_eq!(groups, [vec![0, 1], vec![2], vec![3]]);
}

#[test]
fn a_marker_is_read_only_with_the_pods_nonce() {
    let line = "::deploybot:: n0nce step-1 3 ";
    assert_eq!(marker(line, "n0nce").unwrap().code, 3);
    assert_eq!(marker(line, "other"), None);
    assert_eq!(marker("::deploybot:: n0nce step-1", "n0nce"), None);
    let image = marker("::deploybot:: n0nce image 0 sha256:abc", "n0nce").unwrap();
    assert_eq!(
        image,
        Marker {
            segment: "image".into(),
            code: 0,
            result: "sha256:abc".into()
        }
    );
}

#[test]
fn the_marker_a_script_prints_is_the_marker_deploybot_reads() {
    let printed = print_marker("n0nce", &Segment::Step(2));
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "code=97; result='the step did not produce x'\n{printed}"
        ))
        .output()
        .unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    let read = marker(line.trim_end(), "n0nce").unwrap();
    assert_eq!(read.segment, "step-2");
    assert_eq!(read.code, 97);
    assert_eq!(read.result, "the step did not produce x");
}
