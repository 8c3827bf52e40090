#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn requests_have_a_stable_json_shape() {
    let r = Request::Start { name: "a".into() };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"op":"start","name":"a"}"#
    );
    let r: Request = serde_json::from_str(r#"{"op":"list"}"#).unwrap();
    assert_eq!(r, Request::List);
    assert!(serde_json::from_str::<Request>(r#"{"op":"start","name":"a","x":1}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
}

#[test]
fn states_and_policies_round_trip_as_strings() {
    for s in [
        "defined", "starting", "running", "paused", "stopping", "stopped", "crashed",
    ] {
        let st: PartitionState = s.parse().unwrap();
        assert_eq!(st.as_str(), s);
    }
    assert!("zombie".parse::<PartitionState>().is_err());
    assert_eq!(
        "on-failure".parse::<RestartPolicy>().unwrap(),
        RestartPolicy::OnFailure
    );
    assert_eq!(
        serde_json::to_string(&RestartPolicy::OnFailure).unwrap(),
        r#""on-failure""#
    );
    assert!("always".parse::<RestartPolicy>().is_err());
}
