//! Service ports, as Marathon assigns them: every port an app declares with `0` (a
//! `portDefinitions[].port` or a `portMappings[].servicePort`) gets a port of the service-port
//! range no other app holds, so load balancers (marathon-lb and the like) can bind one
//! stable frontend per app port. An updated app keeps the ports it was given.

use std::collections::BTreeSet;
use std::ops::Range;

use super::AppDefinition;

/// Marathon's default `local_port_min` / `local_port_max`.
pub const SERVICE_PORTS: Range<u16> = 10_000..20_000;

/// Every service port of the range is held by some app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no service port is free in {}-{}: every one is held by an app", range.start, range.end - 1)]
pub struct ServicePortsExhausted {
    pub range: Range<u16>,
}

impl AppDefinition {
    /// The app's service ports, in port order (0 where none is assigned yet).
    pub fn service_ports(&self) -> Vec<u16> {
        match self.port_mappings() {
            Some(mappings) => mappings.iter().map(|m| m.service_port).collect(),
            None => self.port_definitions.iter().map(|p| p.port).collect(),
        }
    }

    /// Gives every port declared `0` a service port: the one the same port of `previous`
    /// (the version being replaced) had, else the lowest of `range` not in `taken` (the
    /// ports of every other app) nor used by this app.
    pub fn assign_service_ports(
        &mut self,
        previous: Option<&AppDefinition>,
        taken: &BTreeSet<u16>,
        range: Range<u16>,
    ) -> Result<(), ServicePortsExhausted> {
        let before = previous.map(AppDefinition::service_ports).unwrap_or_default();
        let mut used: BTreeSet<u16> = self.service_ports().into_iter().filter(|&port| port != 0).collect();
        let mut candidates = range.clone().filter(|port| !taken.contains(port));
        let mut assign = |index: usize, port: &mut u16| -> Result<(), ServicePortsExhausted> {
            if *port != 0 {
                return Ok(());
            }
            let kept = before.get(index).copied().filter(|&old| old != 0 && !used.contains(&old));
            let chosen = match kept {
                Some(old) => old,
                None => candidates
                    .by_ref()
                    .find(|candidate| !used.contains(candidate))
                    .ok_or(ServicePortsExhausted { range: range.clone() })?,
            };
            used.insert(chosen);
            *port = chosen;
            Ok(())
        };
        let mappings = self.container.as_mut().and_then(|c| c.port_mappings.as_mut()).filter(|m| !m.is_empty());
        match mappings {
            Some(mappings) => {
                for (index, mapping) in mappings.iter_mut().enumerate() {
                    assign(index, &mut mapping.service_port)?;
                }
            }
            None => {
                for (index, definition) in self.port_definitions.iter_mut().enumerate() {
                    assign(index, &mut definition.port)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{PortDefinition, parse_app};

    fn app(json: &str) -> AppDefinition {
        parse_app(json.as_bytes(), None).expect("a valid app")
    }

    #[test]
    fn zero_ports_get_free_service_ports_and_fixed_ones_stay() {
        let mut web =
            app(r#"{"id": "/web", "cmd": "x", "portDefinitions": [{"port": 0}, {"port": 10001}, {"port": 0}]}"#);
        web.assign_service_ports(None, &BTreeSet::from([10000, 10002]), SERVICE_PORTS).unwrap();
        assert_eq!(web.service_ports(), [10003, 10001, 10004], "skipping other apps' ports and its own");
    }

    #[test]
    fn an_update_keeps_the_ports_it_had() {
        let mut v1 = app(r#"{"id": "/web", "cmd": "x", "portDefinitions": [{"port": 0}, {"port": 0}]}"#);
        v1.assign_service_ports(None, &BTreeSet::new(), SERVICE_PORTS).unwrap();
        let mut v2 = app(r#"{"id": "/web", "cmd": "y", "portDefinitions": [{"port": 0}, {"port": 0}, {"port": 0}]}"#);
        v2.assign_service_ports(Some(&v1), &BTreeSet::from([10002]), SERVICE_PORTS).unwrap();
        assert_eq!(v2.service_ports(), [10000, 10001, 10003]);
    }

    #[test]
    fn port_mappings_get_service_ports() {
        let mut bridged =
            app(r#"{"id": "/b", "container": {"type": "DOCKER", "docker": {"image": "nginx", "network": "BRIDGE",
                "portMappings": [{"containerPort": 80, "hostPort": 0, "servicePort": 0}]}}}"#);
        bridged.assign_service_ports(None, &BTreeSet::from([10000]), SERVICE_PORTS).unwrap();
        assert_eq!(bridged.service_ports(), [10001]);
        assert!(bridged.port_definitions.is_empty());
    }

    #[test]
    fn an_exhausted_range_is_an_error() {
        let mut web = app(r#"{"id": "/web", "cmd": "x"}"#);
        assert_eq!(web.port_definitions, [PortDefinition::new(0)]);
        let error = web.assign_service_ports(None, &BTreeSet::from([10000, 10001]), 10000..10002).unwrap_err();
        assert_eq!(error.to_string(), "no service port is free in 10000-10001: every one is held by an app");
    }
}
