//! Events, their schema, upcasting and the catalog.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DecodeError, DecodeErrorKind, Error, Result, UpcastError};
use crate::types::{Envelope, EventId, EventType, Metadata, NewEvent, RecordedEvent};
use crate::Payload;

/// A family of domain events, usually an enum with one variant per event type.
///
/// Derive it: each variant is an event type, stored under the variant's name
/// with its fields as the JSON payload (a unit variant stores `{}`, a
/// single-field tuple variant stores the field). The enum also derives serde's
/// `Serialize` and `Deserialize`.
///
/// ```
/// use es_core::{Event, Payload, UpcastError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// pub struct PlacedV1 { customer: String }
///
/// impl From<PlacedV1> for OrderEvent {
///     fn from(v1: PlacedV1) -> Self {
///         OrderEvent::Placed { customer: v1.customer, currency: "EUR".into() }
///     }
/// }
///
/// fn cents_to_amount(mut payload: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
///     let cents = payload["cents"].take();
///     Ok(serde_json::json!({ "amount": cents }))
/// }
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// pub enum OrderEvent {
///     #[event(version = 2, upcast_from = PlacedV1)]   // stored v1 payloads still load
///     Placed { customer: String, currency: String },
///     #[event(version = 2, upcast(from = 1, with = cents_to_amount))]
///     Paid { amount: u64 },
///     Shipped,
///     #[event(rename = "OrderCancelled", alias = "OrderAborted")]
///     Cancelled { reason: String },
/// }
///
/// let stored_v1 = Payload::from(serde_json::json!({ "customer": "ada" }));
/// let event: OrderEvent = OrderEvent::schema().decode_payload("Placed", 1, &stored_v1).unwrap();
/// assert_eq!(event, OrderEvent::Placed { customer: "ada".into(), currency: "EUR".into() });
/// assert_eq!(OrderEvent::Shipped.schema_version(), 1);
/// ```
///
/// | attribute | where | meaning |
/// | --- | --- | --- |
/// | `rename = "Name"` | variant (or struct) | the stored name (default: the variant's name) |
/// | `alias = "Old"` | variant (repeatable) | an older stored name that still decodes |
/// | `version = N` | variant | the current schema version of the payload (default 1) |
/// | `upcast_from = OldShape` | variant (repeatable, oldest first) | typed upcasters: the last one `Into` the event, each earlier one `Into` the next |
/// | `upcast(from = N, with = path)` | variant (repeatable) | a JSON function `fn(Value) -> Result<Value, UpcastError>` from version N to N+1 |
/// | `family = "Name"` | enum | the family's name in the catalog (default: the type's name) |
/// | `crate = "path"` | enum or struct | where `es_core` is, for a renamed dependency |
///
/// On a struct, the struct is a family of one type and takes the variant
/// attributes itself. Mistakes (a duplicate name, `version = 0`, an unknown
/// key, more upcasters than older versions) are compile errors at the token.
///
/// # By hand
///
/// The derive implements the four required methods below; implementing them
/// by hand looks like this.
///
/// ```
/// use std::sync::OnceLock;
/// use es_core::{Event, EventSchema, Metadata, Payload};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Deposited { amount: u64 }
///
/// #[derive(Debug, PartialEq)]
/// enum AccountEvent { Deposited(Deposited), Closed }
///
/// impl Event for AccountEvent {
///     fn event_type(&self) -> &'static str {
///         match self { Self::Deposited(_) => "Deposited", Self::Closed => "AccountClosed" }
///     }
///     fn to_payload(&self) -> serde_json::Result<Payload> {
///         match self { Self::Deposited(e) => Payload::encode(e), Self::Closed => Payload::encode(&()) }
///     }
///     fn from_payload(event_type: &str, payload: &Payload) -> serde_json::Result<Self> {
///         match event_type {
///             "Deposited" => Ok(Self::Deposited(payload.decode()?)),
///             _ => Ok(Self::Closed),
///         }
///     }
///     fn schema() -> &'static EventSchema {
///         static SCHEMA: OnceLock<EventSchema> = OnceLock::new();
///         SCHEMA.get_or_init(|| {
///             EventSchema::builder("AccountEvent")
///                 .event("Deposited", 1).field("amount", "u64")
///                 .event("AccountClosed", 1).alias("Closed")
///                 .build()
///         })
///     }
/// }
///
/// let new = AccountEvent::Deposited(Deposited { amount: 5 }).encode(Metadata::default())?;
/// assert_eq!(new.event_type, "Deposited");
/// assert_eq!(new.payload, serde_json::json!({"amount": 5}));
/// assert_eq!(AccountEvent::stored_types(), ["AccountClosed", "Closed", "Deposited"]);
/// # Ok::<(), es_core::Error>(())
/// ```
pub trait Event: Sized + Send + Sync + 'static {
    /// The stored name of this event's type.
    fn event_type(&self) -> &'static str;

    /// The payload in the current schema version.
    fn to_payload(&self) -> serde_json::Result<Payload>;

    /// Decodes a payload of the current schema version. `event_type` is the
    /// current name of the type (aliases are already resolved).
    fn from_payload(event_type: &str, payload: &Payload) -> serde_json::Result<Self>;

    /// Decodes a payload of the current schema version from JSON text that
    /// a store lends (a replay reads it in place, without a copy). The
    /// default copies the text into a [`Payload`] for
    /// [`from_payload`](Event::from_payload); the derive reads it directly.
    fn from_json(event_type: &str, json: &str) -> serde_json::Result<Self> {
        Self::from_payload(event_type, &Payload::from_trusted_json(json))
    }

    /// The family's schema: types, versions, aliases and upcasters.
    fn schema() -> &'static EventSchema;

    /// The schema version this event is written with.
    fn schema_version(&self) -> u32 {
        Self::schema()
            .current_version(self.event_type())
            .unwrap_or(1)
    }

    /// Encodes this event for appending, with a fresh event id.
    fn encode(&self, metadata: Metadata) -> Result<NewEvent> {
        let schema = Self::schema();
        schema.check()?;
        let event_type = self.event_type();
        let payload = self.to_payload().map_err(|source| Error::Encode {
            what: format!("event {event_type}"),
            source,
        })?;
        Ok(NewEvent {
            event_id: EventId::new(),
            event_type: event_type.to_owned(),
            schema_version: schema.current_version(event_type).unwrap_or(1),
            payload,
            metadata,
        })
    }

    /// Decodes a stored event: resolves aliases, upcasts, then decodes.
    fn decode(raw: &RecordedEvent) -> std::result::Result<Envelope<Self>, DecodeError> {
        Self::schema().decode(raw)
    }

    /// Every stored name (current names and aliases) of this family, sorted:
    /// the filter a reader of the global log uses.
    fn stored_types() -> Vec<String> {
        Self::schema().stored_types()
    }

    /// The family's catalog, to snapshot in tests.
    fn catalog() -> Catalog {
        Self::schema().catalog()
    }
}

type JsonHop = dyn Fn(Value) -> std::result::Result<Value, UpcastError> + Send + Sync;
type TypedHop = dyn Fn(&Payload) -> std::result::Result<Payload, UpcastError> + Send + Sync;

/// One hop of an upcast chain.
enum UpcastFn {
    /// A function of the JSON tree.
    Json(Box<JsonHop>),
    /// A typed conversion, from text to text.
    Typed(Box<TypedHop>),
}

/// A payload part way through an upcast chain: text as long as the hops are
/// typed, a tree while they are JSON functions.
enum Upcasting<'a> {
    Text(std::borrow::Cow<'a, Payload>),
    Tree(Value),
}

impl<'a> Upcasting<'a> {
    fn hop(self, hop: &UpcastFn) -> std::result::Result<Self, UpcastError> {
        Ok(match (hop, self) {
            (UpcastFn::Json(f), Upcasting::Tree(value)) => Upcasting::Tree(f(value)?),
            (UpcastFn::Json(f), Upcasting::Text(text)) => Upcasting::Tree(f(text.to_value()?)?),
            (UpcastFn::Typed(f), Upcasting::Text(text)) => {
                Upcasting::Text(std::borrow::Cow::Owned(f(&text)?))
            }
            (UpcastFn::Typed(f), Upcasting::Tree(value)) => {
                Upcasting::Text(std::borrow::Cow::Owned(f(&Payload::from(value))?))
            }
        })
    }

    fn done(self) -> std::borrow::Cow<'a, Payload> {
        match self {
            Upcasting::Text(text) => text,
            Upcasting::Tree(value) => std::borrow::Cow::Owned(Payload::from(value)),
        }
    }
}

/// A typed view of one event type of a family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeInfo {
    /// The current stored name.
    pub name: String,
    /// The current schema version.
    pub version: u32,
    /// Older names that stored events may carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The payload's fields with their Rust types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldInfo>,
    /// The schema versions an upcaster starts from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upcasts_from: Vec<u32>,
}

/// One payload field in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldInfo {
    /// The field's name in the payload.
    pub name: String,
    /// The field's Rust type, as written.
    #[serde(rename = "type")]
    pub ty: String,
}

/// The list of a family's event types, versions, aliases and fields.
///
/// Snapshot it in a test (its [`Display`](fmt::Display) is stable and
/// readable) so that a change of an event's shape without a version bump
/// fails that test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// The family's name.
    pub family: String,
    /// Its types, sorted by name.
    pub types: Vec<EventTypeInfo>,
}

impl fmt::Display for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.family)?;
        for t in &self.types {
            write!(f, "  {} v{}", t.name, t.version)?;
            if !t.aliases.is_empty() {
                write!(f, " (aliases: {})", t.aliases.join(", "))?;
            }
            if !t.upcasts_from.is_empty() {
                let from: Vec<String> = t.upcasts_from.iter().map(|v| format!("v{v}")).collect();
                write!(f, " (upcasts from {})", from.join(", "))?;
            }
            writeln!(f)?;
            for field in &t.fields {
                writeln!(f, "    {}: {}", field.name, field.ty)?;
            }
        }
        Ok(())
    }
}

/// The schema of an event family: its types with their current versions,
/// the aliases of renamed types and the upcasters of older payloads.
///
/// Built once per family with [`EventSchema::builder`]. A builder mistake (a
/// duplicate name, an alias that collides, a hop missing from a chain) does
/// not panic: it is kept and reported as [`Error::Schema`] by every encode and
/// decode of the family, and by [`EventSchema::check`].
pub struct EventSchema {
    family: String,
    types: Vec<EventTypeInfo>,
    index: NameIndex,
    upcasters: HashMap<(usize, u32), UpcastFn>,
    problems: Vec<String>,
}

impl fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSchema")
            .field("family", &self.family)
            .field("types", &self.types)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl EventSchema {
    /// Starts the schema of the family `family`.
    pub fn builder(family: impl Into<String>) -> SchemaBuilder {
        SchemaBuilder {
            family: family.into(),
            types: Vec::new(),
            upcasters: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The family's name.
    pub fn family(&self) -> &str {
        &self.family
    }

    /// The family's types.
    pub fn types(&self) -> &[EventTypeInfo] {
        &self.types
    }

    /// `Ok` when the builder found no mistake.
    pub fn check(&self) -> Result<()> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Schema(format!(
                "{}: {}",
                self.family,
                self.problems.join("; ")
            )))
        }
    }

    /// The current name of a stored type name (itself or the type it is an alias of).
    pub fn resolve(&self, stored_type: &str) -> Option<&str> {
        self.index
            .get(stored_type)
            .map(|i| self.types[i].name.as_str())
    }

    /// The current schema version of a type, by current name or alias.
    pub fn current_version(&self, stored_type: &str) -> Option<u32> {
        self.index.get(stored_type).map(|i| self.types[i].version)
    }

    /// Every stored name (current names and aliases), sorted.
    pub fn stored_types(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.names().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// The family's catalog.
    pub fn catalog(&self) -> Catalog {
        Catalog {
            family: self.family.clone(),
            types: self.types.clone(),
        }
    }

    /// The stored type's entry, if a payload of `schema_version` can be
    /// brought to its current version.
    fn entry(
        &self,
        stored_type: &str,
        schema_version: u32,
    ) -> std::result::Result<(usize, &EventTypeInfo), DecodeErrorKind> {
        if !self.problems.is_empty() {
            return Err(DecodeErrorKind::InvalidSchema(self.problems.join("; ")));
        }
        let i = self
            .index
            .get(stored_type)
            .ok_or(DecodeErrorKind::UnknownType)?;
        let info = &self.types[i];
        if schema_version > info.version {
            return Err(DecodeErrorKind::NewerVersion {
                stored: schema_version,
                current: info.version,
            });
        }
        Ok((i, info))
    }

    /// Brings a stored payload to the current schema version of its type.
    /// Returns the type's current name and the upcast payload (borrowed when
    /// no hop was needed).
    pub fn upcast<'a>(
        &'a self,
        stored_type: &str,
        schema_version: u32,
        payload: &'a Payload,
    ) -> std::result::Result<(&'a str, std::borrow::Cow<'a, Payload>), DecodeErrorKind> {
        let (i, info) = self.entry(stored_type, schema_version)?;
        Ok((&info.name, self.hops(i, info, schema_version, payload)?))
    }

    /// Brings a payload of the entry's type from `schema_version` to its
    /// current version, hop by hop (borrowed when no hop is needed).
    fn hops<'a>(
        &self,
        i: usize,
        info: &EventTypeInfo,
        schema_version: u32,
        payload: &'a Payload,
    ) -> std::result::Result<std::borrow::Cow<'a, Payload>, DecodeErrorKind> {
        let mut payload = Upcasting::Text(std::borrow::Cow::Borrowed(payload));
        for from in schema_version..info.version {
            let hop = self
                .upcasters
                .get(&(i, from))
                .ok_or(DecodeErrorKind::MissingUpcaster { from })?;
            payload = payload
                .hop(hop)
                .map_err(|source| DecodeErrorKind::Upcast { from, source })?;
        }
        Ok(payload.done())
    }

    /// Decodes a stored payload into an event of the family, without a
    /// location for errors.
    pub fn decode_payload<E: Event>(
        &self,
        stored_type: &str,
        schema_version: u32,
        payload: &Payload,
    ) -> std::result::Result<E, DecodeErrorKind> {
        let (name, payload) = self.upcast(stored_type, schema_version, payload)?;
        E::from_payload(name, &payload).map_err(DecodeErrorKind::Payload)
    }

    /// Decodes a stored payload lent as JSON text (what a replay reads):
    /// in place when it is of the current schema version, through the
    /// upcasters otherwise. The errors are those of
    /// [`decode_payload`](Self::decode_payload).
    ///
    /// ```
    /// use es_core::Event;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
    /// enum CounterEvent {
    ///     Added { amount: u64 },
    /// }
    ///
    /// let schema = CounterEvent::schema();
    /// let event: CounterEvent = schema.decode_json("Added", 1, r#"{"amount":3}"#)?;
    /// assert_eq!(event, CounterEvent::Added { amount: 3 });
    /// assert!(schema.decode_json::<CounterEvent>("Removed", 1, "{}").is_err());
    /// # Ok::<(), es_core::DecodeErrorKind>(())
    /// ```
    pub fn decode_json<E: Event>(
        &self,
        stored_type: &str,
        schema_version: u32,
        json: &str,
    ) -> std::result::Result<E, DecodeErrorKind> {
        let (i, info) = self.entry(stored_type, schema_version)?;
        if schema_version == info.version {
            return E::from_json(&info.name, json).map_err(DecodeErrorKind::Payload);
        }
        let payload = Payload::from_trusted_json(json);
        let payload = self.hops(i, info, schema_version, &payload)?;
        E::from_payload(&info.name, &payload).map_err(DecodeErrorKind::Payload)
    }

    /// Decodes only the event of a stored event, with the same errors as
    /// [`EventSchema::decode`] but without building an envelope: what a
    /// replay needs, without copying the stream id, type name and metadata.
    pub fn decode_event<E: Event>(
        &self,
        raw: &RecordedEvent,
    ) -> std::result::Result<E, DecodeError> {
        self.decode_payload(&raw.event_type, raw.schema_version, &raw.payload)
            .map_err(|kind| located(raw, kind))
    }

    /// Decodes a stored event into an envelope of the family.
    pub fn decode<E: Event>(
        &self,
        raw: &RecordedEvent,
    ) -> std::result::Result<Envelope<E>, DecodeError> {
        let locate = |kind| located(raw, kind);
        let (name, payload) = self
            .upcast(&raw.event_type, raw.schema_version, &raw.payload)
            .map_err(locate)?;
        let event =
            E::from_payload(name, &payload).map_err(|e| locate(DecodeErrorKind::Payload(e)))?;
        Ok(Envelope {
            position: raw.position,
            stream_id: raw.stream_id.clone(),
            version: raw.version,
            event_id: raw.event_id,
            // The stored name, shared, unless it is an alias.
            event_type: if raw.event_type == name {
                raw.event_type.clone()
            } else {
                EventType::from(name)
            },
            stored_schema_version: raw.schema_version,
            metadata: raw.metadata.clone(),
            recorded_at: raw.recorded_at,
            event,
        })
    }
}

/// Stored names (current names and aliases) to type indexes. Families are
/// small, so a scan of a short list beats hashing; large ones use a map.
enum NameIndex {
    Small(Vec<(String, usize)>),
    Large(HashMap<String, usize>),
}

impl NameIndex {
    const SMALL: usize = 16;

    fn new(names: Vec<(String, usize)>) -> Self {
        if names.len() <= Self::SMALL {
            NameIndex::Small(names)
        } else {
            NameIndex::Large(names.into_iter().collect())
        }
    }

    fn get(&self, name: &str) -> Option<usize> {
        match self {
            NameIndex::Small(names) => names.iter().find(|(n, _)| n == name).map(|&(_, i)| i),
            NameIndex::Large(map) => map.get(name).copied(),
        }
    }

    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            NameIndex::Small(names) => Box::new(names.iter().map(|(n, _)| n.as_str())),
            NameIndex::Large(map) => Box::new(map.keys().map(String::as_str)),
        }
    }
}

/// A decoding error at the place of a stored event.
fn located(raw: &RecordedEvent, kind: DecodeErrorKind) -> DecodeError {
    DecodeError {
        stream_id: raw.stream_id.clone(),
        version: raw.version,
        position: raw.position,
        event_type: raw.event_type.to_string(),
        schema_version: raw.schema_version,
        kind,
    }
}

/// Builds an [`EventSchema`]. Each [`SchemaBuilder::event`] starts a type;
/// `alias`, `field` and the `upcast*` calls that follow it refer to that type.
///
/// ```
/// use es_core::EventSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct PlacedV1 { customer: String }
/// #[derive(Serialize)]
/// struct PlacedV2 { customer: String, currency: String }
/// impl From<PlacedV1> for PlacedV2 {
///     fn from(v1: PlacedV1) -> Self { PlacedV2 { customer: v1.customer, currency: "EUR".into() } }
/// }
///
/// let schema = EventSchema::builder("OrderEvent")
///     .event("OrderPlaced", 3)
///     .alias("OrderCreated")
///     .upcast::<PlacedV1, PlacedV2>(1)
///     .upcast_json(2, |mut v| {
///         v["lines"] = serde_json::json!([]);
///         Ok(v)
///     })
///     .build();
/// schema.check()?;
///
/// let stored = es_core::Payload::from(serde_json::json!({"customer": "ada"}));
/// let (name, now) = schema.upcast("OrderCreated", 1, &stored).unwrap();
/// assert_eq!(name, "OrderPlaced");
/// assert_eq!(*now, serde_json::json!({"customer": "ada", "currency": "EUR", "lines": []}));
/// # Ok::<(), es_core::Error>(())
/// ```
#[must_use = "call `build` to get the schema"]
pub struct SchemaBuilder {
    family: String,
    types: Vec<EventTypeInfo>,
    upcasters: Vec<(usize, u32, UpcastFn)>,
    problems: Vec<String>,
}

impl fmt::Debug for SchemaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaBuilder")
            .field("family", &self.family)
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

impl SchemaBuilder {
    /// Adds an event type with its current schema version (at least 1).
    pub fn event(mut self, name: impl Into<String>, version: u32) -> Self {
        let name = name.into();
        if version == 0 {
            self.problems
                .push(format!("`{name}` has version 0; versions start at 1"));
        }
        self.types.push(EventTypeInfo {
            name,
            version: version.max(1),
            aliases: Vec::new(),
            fields: Vec::new(),
            upcasts_from: Vec::new(),
        });
        self
    }

    fn current(&mut self, what: &str) -> Option<usize> {
        if self.types.is_empty() {
            self.problems
                .push(format!("`{what}` given before any `event`"));
            None
        } else {
            Some(self.types.len() - 1)
        }
    }

    /// Adds an older name of the current type.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        if let Some(i) = self.current("alias") {
            self.types[i].aliases.push(alias.into());
        }
        self
    }

    /// Adds a payload field of the current type to the catalog.
    pub fn field(mut self, name: impl Into<String>, ty: impl Into<String>) -> Self {
        if let Some(i) = self.current("field") {
            self.types[i].fields.push(FieldInfo {
                name: name.into(),
                ty: ty.into(),
            });
        }
        self
    }

    /// Adds a JSON-function upcaster of the current type from schema version
    /// `from` to `from + 1`: for renamed or split fields and defaults.
    pub fn upcast_json<F>(self, from: u32, hop: F) -> Self
    where
        F: Fn(Value) -> std::result::Result<Value, UpcastError> + Send + Sync + 'static,
    {
        self.hop(from, UpcastFn::Json(Box::new(hop)))
    }

    fn hop(mut self, from: u32, hop: UpcastFn) -> Self {
        if let Some(i) = self.current("upcast") {
            self.upcasters.push((i, from, hop));
        }
        self
    }

    /// Adds a typed upcaster of the current type from schema version `from`
    /// to `from + 1`: the stored payload is read as `Old`, converted with
    /// `Into`, and written as `Next`.
    pub fn upcast<Old, Next>(self, from: u32) -> Self
    where
        Old: DeserializeOwned + Into<Next> + 'static,
        Next: Serialize + 'static,
    {
        self.hop(
            from,
            UpcastFn::Typed(Box::new(|payload| {
                let old: Old = payload.decode()?;
                Ok(Payload::encode(&old.into())?)
            })),
        )
    }

    /// Adds a typed upcaster of the current type from schema version `from`
    /// to the current version, converting the old shape into the event
    /// family `E` itself (the last hop of a chain).
    pub fn upcast_to_event<Old, E>(self, from: u32) -> Self
    where
        Old: DeserializeOwned + Into<E> + 'static,
        E: Event,
    {
        self.hop(
            from,
            UpcastFn::Typed(Box::new(|payload| {
                let old: Old = payload.decode()?;
                Ok(old.into().to_payload()?)
            })),
        )
    }

    /// Checks the schema and builds it. Mistakes are kept in the schema and
    /// reported by [`EventSchema::check`].
    pub fn build(self) -> EventSchema {
        let SchemaBuilder {
            family,
            mut types,
            upcasters,
            mut problems,
        } = self;
        let mut index = HashMap::new();
        for (i, t) in types.iter().enumerate() {
            for name in std::iter::once(&t.name).chain(&t.aliases) {
                if let Some(&other) = index.get(name.as_str()) {
                    let other: &EventTypeInfo = &types[other];
                    problems.push(format!(
                        "the name `{name}` is used by `{}` and `{}`",
                        other.name, t.name
                    ));
                } else {
                    index.insert(name.clone(), i);
                }
            }
        }
        let mut map = HashMap::new();
        for (i, from, hop) in upcasters {
            let t = &mut types[i];
            if from == 0 || from >= t.version {
                problems.push(format!(
                    "`{}` has an upcaster from version {from}, but its versions are 1..{}",
                    t.name, t.version
                ));
                continue;
            }
            if map.insert((i, from), hop).is_some() {
                problems.push(format!(
                    "`{}` has two upcasters from version {from}",
                    t.name
                ));
            }
            t.upcasts_from.push(from);
        }
        for t in &mut types {
            t.upcasts_from.sort_unstable();
        }
        // Reorder types by name for the catalog, remapping the index and upcasters.
        let mut order: Vec<usize> = (0..types.len()).collect();
        order.sort_by(|&a, &b| types[a].name.cmp(&types[b].name));
        let mut new_of_old = vec![0; types.len()];
        for (new, &old) in order.iter().enumerate() {
            new_of_old[old] = new;
        }
        let mut sorted: Vec<Option<EventTypeInfo>> = types.into_iter().map(Some).collect();
        let types: Vec<EventTypeInfo> =
            order.iter().filter_map(|&old| sorted[old].take()).collect();
        let index = NameIndex::new(
            index
                .into_iter()
                .map(|(name, old)| (name, new_of_old[old]))
                .collect(),
        );
        let upcasters = map
            .into_iter()
            .map(|((old, from), hop)| ((new_of_old[old], from), hop))
            .collect();
        EventSchema {
            family,
            types,
            index,
            upcasters,
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> EventSchema {
        EventSchema::builder("Test")
            .event("B", 3)
            .alias("OldB")
            .upcast_json(1, |mut v| {
                v["one"] = json!(1);
                Ok(v)
            })
            .upcast_json(2, |mut v| {
                v["two"] = json!(2);
                Ok(v)
            })
            .event("A", 1)
            .field("x", "u32")
            .event("C", 2)
            .upcast_json(1, |_| Err(UpcastError::msg("refused")))
            .build()
    }

    #[test]
    fn chain_runs_in_order_through_aliases() {
        let s = schema();
        s.check().unwrap();
        let empty = Payload::from(json!({}));
        let (name, v) = s.upcast("OldB", 1, &empty).unwrap();
        assert_eq!(name, "B");
        assert_eq!(*v, json!({"one": 1, "two": 2}));
        let (_, v) = s.upcast("B", 2, &empty).unwrap();
        assert_eq!(*v, json!({"two": 2}));
        let current = Payload::from(json!({"k": 0}));
        let (_, v) = s.upcast("B", 3, &current).unwrap();
        assert!(matches!(v, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn errors_are_typed() {
        let s = schema();
        assert!(matches!(
            s.upcast("Nope", 1, &Payload::from(json!({}))),
            Err(DecodeErrorKind::UnknownType)
        ));
        assert!(matches!(
            s.upcast("A", 2, &Payload::from(json!({}))),
            Err(DecodeErrorKind::NewerVersion {
                stored: 2,
                current: 1
            })
        ));
        assert!(matches!(
            s.upcast("C", 1, &Payload::from(json!({}))),
            Err(DecodeErrorKind::Upcast { from: 1, .. })
        ));
    }

    #[test]
    fn missing_hop_is_reported() {
        let s = EventSchema::builder("T")
            .event("A", 3)
            .upcast_json(2, Ok)
            .build();
        assert!(matches!(
            s.upcast("A", 1, &Payload::from(json!({}))),
            Err(DecodeErrorKind::MissingUpcaster { from: 1 })
        ));
    }

    #[test]
    fn builder_mistakes_are_kept_not_panicked() {
        let s = EventSchema::builder("T")
            .alias("early")
            .event("A", 1)
            .alias("B")
            .event("B", 0)
            .upcast_json(5, Ok)
            .build();
        let err = s.check().unwrap_err().to_string();
        assert!(err.contains("before any `event`"), "{err}");
        assert!(err.contains("the name `B` is used by `A` and `B`"), "{err}");
        assert!(err.contains("version 0"), "{err}");
        assert!(err.contains("upcaster from version 5"), "{err}");
        assert!(matches!(
            s.upcast("A", 1, &Payload::from(json!({}))),
            Err(DecodeErrorKind::InvalidSchema(_))
        ));
    }

    #[test]
    fn large_families_resolve_names_and_aliases() {
        let mut builder = EventSchema::builder("Large");
        for i in 0..20 {
            builder = builder
                .event(format!("T{i:02}"), 1)
                .alias(format!("Old{i:02}"));
        }
        let s = builder.build();
        s.check().unwrap();
        assert!(matches!(s.index, NameIndex::Large(_)));
        assert_eq!(s.resolve("Old07"), Some("T07"));
        assert_eq!(s.resolve("T19"), Some("T19"));
        assert_eq!(s.resolve("T20"), None);
        let names = s.stored_types();
        assert_eq!(names.len(), 40);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert!(matches!(schema().index, NameIndex::Small(_)));
    }

    #[test]
    fn catalog_is_sorted_and_readable() {
        let text = schema().catalog().to_string();
        assert_eq!(
            text,
            "Test\n  A v1\n    x: u32\n  B v3 (aliases: OldB) (upcasts from v1, v2)\n  C v2 (upcasts from v1)\n"
        );
        assert_eq!(schema().stored_types(), ["A", "B", "C", "OldB"]);
    }
}
