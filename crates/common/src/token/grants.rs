//! What a token allows: [`Grants`], its scope syntax and its protobuf form.
//!
//! Room grants name the rooms they cover: `room=<name>` is one room, `room=<prefix>*` every room
//! whose name starts with `<prefix>`; no name at all covers every room. A login token carries the
//! user's stored grants, by default [`Grants::user`]: it may ask to join rooms (the room's
//! authority decides) and view cameras, but it carries no media rights in any room.

use std::{fmt, str::FromStr};

use rethink_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// What a token allows. The default allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// Conference rooms.
    pub rooms: RoomGrants,
    /// IoT cameras.
    pub cameras: CameraGrants,
    /// Server-side hyperties.
    pub services: ServiceGrants,
    /// Administers users, API keys and signing keys.
    pub admin: bool,
}

/// Grants on conference rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomGrants {
    /// Join a room (as a participant).
    pub join: bool,
    /// Publish media into a room.
    pub publish: bool,
    /// Receive media from a room.
    pub subscribe: bool,
    /// Create, close and manage participants of rooms.
    pub admin: bool,
    /// The rooms these grants apply to: names, or prefixes ending in `*`; `None` means every
    /// room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// Grants on cameras.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CameraGrants {
    /// Watch cameras.
    pub view: bool,
    /// Register cameras and change their settings (recording, ...).
    pub manage: bool,
}

/// Grants for server-side components.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceGrants {
    /// Attach to msg-node as a server hyperty.
    pub attach: bool,
}

impl Grants {
    /// Returns the grants of an ordinary user: ask to join any room (the room's authority
    /// decides) and view cameras. Publishing and receiving media in a room need grants that
    /// name it, set on the user or given by the room's authority.
    pub fn user() -> Self {
        Self {
            rooms: RoomGrants {
                join: true,
                publish: false,
                subscribe: false,
                admin: false,
                names: None,
            },
            cameras: CameraGrants {
                view: true,
                manage: false,
            },
            services: ServiceGrants::default(),
            admin: false,
        }
    }

    /// Returns every grant there is.
    pub fn all() -> Self {
        Self {
            rooms: RoomGrants {
                join: true,
                publish: true,
                subscribe: true,
                admin: true,
                names: None,
            },
            cameras: CameraGrants {
                view: true,
                manage: true,
            },
            services: ServiceGrants { attach: true },
            admin: true,
        }
    }

    /// Returns what both `self` and `other` allow; used so a minted token is never wider than
    /// the key that minted it.
    pub fn intersect(&self, other: &Grants) -> Grants {
        let names = match (&self.rooms.names, &other.rooms.names) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (Some(a), Some(b)) => Some(intersect_patterns(a, b)),
        };
        Grants {
            rooms: RoomGrants {
                join: self.rooms.join && other.rooms.join,
                publish: self.rooms.publish && other.rooms.publish,
                subscribe: self.rooms.subscribe && other.rooms.subscribe,
                admin: self.rooms.admin && other.rooms.admin,
                names,
            },
            cameras: CameraGrants {
                view: self.cameras.view && other.cameras.view,
                manage: self.cameras.manage && other.cameras.manage,
            },
            services: ServiceGrants {
                attach: self.services.attach && other.services.attach,
            },
            admin: self.admin && other.admin,
        }
    }

    /// Returns true when everything `self` allows is also allowed by `other`.
    pub fn is_subset_of(&self, other: &Grants) -> bool {
        self.intersect(other) == self.normalized()
    }

    /// Returns true when the room grants apply to `room`: no names, a name equal to it, or a
    /// prefix pattern (`demo*`) it starts with.
    pub fn covers_room(&self, room: &str) -> bool {
        self.rooms
            .names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| pattern_covers(n, room)))
    }

    /// Returns true when the bearer may join `room` (join grant, and the room is covered).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.join && self.covers_room(room)
    }

    /// Returns true when the bearer may publish media into `room`.
    pub fn may_publish(&self, room: &str) -> bool {
        self.rooms.publish && self.covers_room(room)
    }

    /// Returns true when the bearer may receive media from `room`.
    pub fn may_subscribe(&self, room: &str) -> bool {
        self.rooms.subscribe && self.covers_room(room)
    }

    /// Returns true when the bearer may administer `room` (create, close, remove participants);
    /// the global admin grant counts too.
    pub fn may_admin_room(&self, room: &str) -> bool {
        self.admin || (self.rooms.admin && self.covers_room(room))
    }

    // Intersection with "everything" keeps values but drops duplicate room names, so compare
    // against the same normal form.
    fn normalized(&self) -> Grants {
        self.intersect(&Grants::all())
    }

    fn scopes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let flags = [
            (self.rooms.join, "rooms.join"),
            (self.rooms.publish, "rooms.publish"),
            (self.rooms.subscribe, "rooms.subscribe"),
            (self.rooms.admin, "rooms.admin"),
            (self.cameras.view, "cameras.view"),
            (self.cameras.manage, "cameras.manage"),
            (self.services.attach, "services.attach"),
            (self.admin, "admin"),
        ];
        out.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, s)| s.to_string()),
        );
        if let Some(names) = &self.rooms.names {
            out.extend(names.iter().map(|n| format!("room={n}")));
        }
        out
    }
}

/// Formats grants as the comma-separated scope list [`Grants::from_str`] reads.
impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scopes().join(","))
    }
}

/// Parses a comma-separated scope list: `rooms.join`, `rooms.publish`, `rooms.subscribe`,
/// `rooms.admin`, `rooms.*`, `cameras.view`, `cameras.manage`, `cameras.*`, `services.attach`,
/// `admin`, `room=<name>` or `room=<prefix>*` (limits room grants to those rooms), and the
/// presets `user`, `all` and `none`.
impl FromStr for Grants {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut g = Grants::default();
        for scope in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match scope {
                "user" => {
                    let names = g.rooms.names.take();
                    g = merge(&g, &Grants::user());
                    g.rooms.names = names;
                }
                "all" => {
                    let names = g.rooms.names.take();
                    g = Grants::all();
                    g.rooms.names = names;
                }
                "none" => {}
                "rooms.join" => g.rooms.join = true,
                "rooms.publish" => g.rooms.publish = true,
                "rooms.subscribe" => g.rooms.subscribe = true,
                "rooms.admin" => g.rooms.admin = true,
                "rooms.*" => {
                    g.rooms.join = true;
                    g.rooms.publish = true;
                    g.rooms.subscribe = true;
                    g.rooms.admin = true;
                }
                "cameras.view" => g.cameras.view = true,
                "cameras.manage" => g.cameras.manage = true,
                "cameras.*" => {
                    g.cameras.view = true;
                    g.cameras.manage = true;
                }
                "services.attach" => g.services.attach = true,
                "admin" => g.admin = true,
                other => match other.strip_prefix("room=") {
                    Some(name) if valid_room_pattern(name) => {
                        g.rooms
                            .names
                            .get_or_insert_with(Vec::new)
                            .push(name.to_string());
                    }
                    _ => {
                        return Err(format!(
                            "unknown grant {other:?}; use rooms.join, rooms.publish, \
                             rooms.subscribe, rooms.admin, cameras.view, cameras.manage, \
                             services.attach, admin, room=<name>, room=<prefix>*, user, all \
                             or none"
                        ));
                    }
                },
            }
        }
        Ok(g)
    }
}

/// Returns true when the room pattern `pattern` (a name, or a prefix ending in `*`) covers
/// `name`, which may itself be a pattern: `demo*` covers `demo-1` and `demo-*`.
fn pattern_covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Returns the patterns covered by both lists: each pattern of one list that a pattern of the
/// other covers (the narrower of two overlapping prefixes), without duplicates.
fn intersect_patterns(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let narrower = a
        .iter()
        .filter(|n| b.iter().any(|p| pattern_covers(p, n)))
        .chain(b.iter().filter(|n| a.iter().any(|p| pattern_covers(p, n))));
    for name in narrower {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// A room pattern is a non-empty name, or a prefix followed by one `*` at the end.
fn valid_room_pattern(pattern: &str) -> bool {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    !pattern.is_empty() && !body.contains('*') && !body.contains(',')
}

fn merge(a: &Grants, b: &Grants) -> Grants {
    Grants {
        rooms: RoomGrants {
            join: a.rooms.join || b.rooms.join,
            publish: a.rooms.publish || b.rooms.publish,
            subscribe: a.rooms.subscribe || b.rooms.subscribe,
            admin: a.rooms.admin || b.rooms.admin,
            names: a.rooms.names.clone(),
        },
        cameras: CameraGrants {
            view: a.cameras.view || b.cameras.view,
            manage: a.cameras.manage || b.cameras.manage,
        },
        services: ServiceGrants {
            attach: a.services.attach || b.services.attach,
        },
        admin: a.admin || b.admin,
    }
}

impl From<&Grants> for pb::Grants {
    fn from(g: &Grants) -> Self {
        pb::Grants {
            rooms: Some(pb::RoomGrants {
                join: g.rooms.join,
                publish: g.rooms.publish,
                subscribe: g.rooms.subscribe,
                admin: g.rooms.admin,
                names: g.rooms.names.clone().unwrap_or_default(),
                all_rooms: g.rooms.names.is_none(),
            }),
            cameras: Some(pb::CameraGrants {
                view: g.cameras.view,
                manage: g.cameras.manage,
            }),
            services: Some(pb::ServiceGrants {
                attach: g.services.attach,
            }),
            admin: g.admin,
        }
    }
}

impl From<&pb::Grants> for Grants {
    fn from(g: &pb::Grants) -> Self {
        let rooms = g.rooms.clone().unwrap_or_default();
        let cameras = g.cameras.unwrap_or_default();
        let services = g.services.unwrap_or_default();
        Grants {
            rooms: RoomGrants {
                join: rooms.join,
                publish: rooms.publish,
                subscribe: rooms.subscribe,
                admin: rooms.admin,
                names: (!rooms.all_rooms).then_some(rooms.names),
            },
            cameras: CameraGrants {
                view: cameras.view,
                manage: cameras.manage,
            },
            services: ServiceGrants {
                attach: services.attach,
            },
            admin: g.admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersect_never_widens() {
        let key = Grants::from_str("rooms.join,rooms.subscribe,room=a,room=b").unwrap();
        let wanted = Grants::from_str("all").unwrap();
        let got = key.intersect(&wanted);
        assert!(got.is_subset_of(&key));
        assert!(!got.admin && !got.rooms.publish && got.rooms.join);
        assert_eq!(got.rooms.names, Some(vec!["a".into(), "b".into()]));
        let narrow = Grants::from_str("rooms.join,room=b,room=c").unwrap();
        assert_eq!(key.intersect(&narrow).rooms.names, Some(vec!["b".into()]));
        assert!(!Grants::all().is_subset_of(&key));
    }

    #[test]
    fn scopes_round_trip() {
        for text in [
            "user",
            "all",
            "none",
            "rooms.join,room=x",
            "services.attach,admin",
        ] {
            let g: Grants = text.parse().unwrap();
            assert_eq!(g.to_string().parse::<Grants>().unwrap(), g, "{text}");
        }
        assert!("rooms.fly".parse::<Grants>().is_err());
    }

    #[test]
    fn room_checks_respect_names() {
        let g: Grants = "rooms.join,rooms.publish,room=a".parse().unwrap();
        assert!(g.may_join("a") && g.may_publish("a") && !g.may_subscribe("a"));
        assert!(!g.may_join("b") && !g.may_admin_room("a"));
        assert!(Grants::all().may_admin_room("any"));
    }

    #[test]
    fn prefixes_cover_rooms_that_start_with_them() {
        let g: Grants = "rooms.publish,room=demo*,room=lobby".parse().unwrap();
        assert!(g.may_publish("demo") && g.may_publish("demo-42") && g.may_publish("lobby"));
        assert!(!g.may_publish("lobby2") && !g.may_publish("dem") && !g.may_publish("x"));
        let key: Grants = "rooms.publish,room=demo*".parse().unwrap();
        let wanted: Grants = "rooms.publish,room=demo-1*,room=other".parse().unwrap();
        let got = key.intersect(&wanted);
        assert_eq!(got.rooms.names, Some(vec!["demo-1*".to_string()]));
        assert!(got.is_subset_of(&key));
        assert!(!wanted.is_subset_of(&key));
        for bad in ["room=", "room=*a", "room=a*b*"] {
            assert!(bad.parse::<Grants>().is_err(), "{bad}");
        }
        assert!("room=*".parse::<Grants>().is_ok());
    }

    #[test]
    fn a_login_token_carries_no_media_rights() {
        let user = Grants::user();
        assert!(user.may_join("any") && user.cameras.view);
        assert!(!user.may_publish("any") && !user.may_subscribe("any"));
        assert!(!user.may_admin_room("any") && !user.services.attach);
    }

    #[test]
    fn proto_round_trip() {
        for g in [
            Grants::all(),
            Grants::default(),
            "rooms.join,room=z".parse().unwrap(),
        ] {
            let p: pb::Grants = (&g).into();
            assert_eq!(Grants::from(&p), g);
        }
    }
}
