//! Tables to CSV (the `csv` crate) and Excel .xlsx (`rust_xlsxwriter`, constant-memory
//! worksheets). Integers are written as numbers, text as text; money stays in 分.

use rust_xlsxwriter::Workbook;
use std::cell::RefCell;
use std::rc::Rc;

use super::{Cell, Table};

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Xlsx,
}

impl Format {
    pub fn parse(text: Option<&str>) -> Result<Format, String> {
        match text.unwrap_or("json") {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "xlsx" => Ok(Format::Xlsx),
            other => Err(format!("format: {other:?} is not json, csv or xlsx")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

/// The buffer a CSV writer fills and the streaming side drains.
#[derive(Clone, Default)]
struct SharedBuffer(Rc<RefCell<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes CSV rows into a buffer that the caller drains in chunks (for streaming).
pub struct CsvRows {
    writer: csv::Writer<SharedBuffer>,
    buffer: SharedBuffer,
}

impl CsvRows {
    pub fn new(columns: &[String]) -> Result<CsvRows, String> {
        let buffer = SharedBuffer::default();
        let mut writer = csv::Writer::from_writer(buffer.clone());
        writer.write_record(columns).map_err(|e| e.to_string())?;
        Ok(CsvRows { writer, buffer })
    }

    pub fn push(&mut self, row: &[Cell]) -> Result<(), String> {
        self.writer
            .write_record(row.iter().map(Cell::text))
            .map_err(|e| e.to_string())
    }

    /// Bytes written so far that have not been taken.
    pub fn buffered(&self) -> usize {
        self.buffer.0.borrow().len()
    }

    /// Take what has been written so far.
    pub fn take(&mut self) -> Result<Vec<u8>, String> {
        self.writer.flush().map_err(|e| e.to_string())?;
        Ok(std::mem::take(&mut *self.buffer.0.borrow_mut()))
    }
}

pub fn to_csv(table: &Table) -> Result<Vec<u8>, String> {
    let mut rows = CsvRows::new(&table.columns)?;
    for row in &table.rows {
        rows.push(row)?;
    }
    rows.take()
}

/// Most data rows one worksheet holds (Excel's limit less the header).
pub const xlsx_rows_max: usize = 1_048_575;

/// Builds an .xlsx worksheet row by row.
pub struct XlsxRows {
    workbook: Workbook,
    rows: u32,
}

impl XlsxRows {
    pub fn new(columns: &[String]) -> Result<XlsxRows, String> {
        let mut workbook = Workbook::new();
        let sheet = workbook
            .add_worksheet_with_constant_memory()
            .map_err(|e| e.to_string())?;
        sheet.set_name("report").map_err(|e| e.to_string())?;
        for (i, column) in columns.iter().enumerate() {
            sheet
                .write_string(0, i as u16, column)
                .map_err(|e| e.to_string())?;
        }
        Ok(XlsxRows { workbook, rows: 0 })
    }

    pub fn push(&mut self, row: &[Cell]) -> Result<(), String> {
        if self.rows as usize >= xlsx_rows_max {
            return Err(format!(
                "more than {xlsx_rows_max} rows do not fit in one worksheet; export CSV"
            ));
        }
        self.rows += 1;
        let sheet = self
            .workbook
            .worksheet_from_index(0)
            .map_err(|e| e.to_string())?;
        for (i, cell) in row.iter().enumerate() {
            let column = i as u16;
            match cell {
                Cell::Int(v) => sheet.write_number(self.rows, column, *v as f64),
                Cell::Text(t) => sheet.write_string(self.rows, column, t),
            }
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        self.workbook.save_to_buffer().map_err(|e| e.to_string())
    }
}

pub fn to_xlsx(table: &Table) -> Result<Vec<u8>, String> {
    let mut rows = XlsxRows::new(&table.columns)?;
    for row in &table.rows {
        rows.push(row)?;
    }
    rows.finish()
}
