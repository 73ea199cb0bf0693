//! `hq-hub`: the headquarters hub. Stub until the sync issue lands.

fn main() {
    eprintln!("hq-hub: not built yet; see ARCHITECTURE.md");
    std::process::exit(2);
}
