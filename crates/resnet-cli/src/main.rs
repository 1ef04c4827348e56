#[allow(dead_code)]
mod labels;
#[allow(dead_code)]
mod pretrained;

fn main() {}
