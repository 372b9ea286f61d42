static PROG: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));
fn main() {
    let mut ebpf = aya::Ebpf::load(PROG).unwrap();
    let p: &mut aya::programs::SchedClassifier = ebpf.program_mut("mirror_ingress").unwrap().try_into().unwrap();
    p.load().unwrap();
    println!("loaded ok");
}
