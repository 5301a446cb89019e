//! Data transfer: MOV MOVZX MOVSX XCHG CMOVcc LEA CBW CWDE CWD CDQ XLAT CMPXCHG CMPXCHG8B XADD LAHF SAHF, flag operations CLC STC CMC CLD STD, SALC.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn mov(&mut self, i: &Instruction) -> Res<()> {
        let v = self.read_op(i, 1)?;
        self.write_op(i, 0, v)
    }
    pub(super) fn movzx(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("movzx: not implemented yet"))
    }
    pub(super) fn movsx(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("movsx: not implemented yet"))
    }
    pub(super) fn xchg(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("xchg: not implemented yet"))
    }
    pub(super) fn cmovcc(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("cmovcc: not implemented yet"))
    }
    pub(super) fn lea(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lea: not implemented yet"))
    }
    pub(super) fn convert(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("convert: not implemented yet"))
    }
    pub(super) fn xlat(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("xlat: not implemented yet"))
    }
    pub(super) fn cmpxchg(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("cmpxchg: not implemented yet"))
    }
    pub(super) fn cmpxchg8b(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("cmpxchg8b: not implemented yet"))
    }
    pub(super) fn xadd(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("xadd: not implemented yet"))
    }
    pub(super) fn lahf(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lahf: not implemented yet"))
    }
    pub(super) fn sahf(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("sahf: not implemented yet"))
    }
    pub(super) fn flag_op(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("flag_op: not implemented yet"))
    }
    pub(super) fn salc(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("salc: not implemented yet"))
    }
}
