use es_core::Event;

#[derive(Event)]
union Bits {
    a: u32,
    b: f32,
}

fn main() {}
