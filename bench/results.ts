/** The systems a table can have a column for. */
export type SystemName =
  | 'registry-cache'
  | 'peer'
  | 'nginx'
  | 'direct'
  | 'rc AlwaysVerify'
  | 'rc NeverVerify'
  | 'rc serialize (1)'
  | 'rc max 3'
  | 'rc unlimited'
  | 'rc sharing'
  | 'rc no sharing'
  | '1k blobs'
  | '10k blobs'
  | '100k blobs';

/** One measured figure, with every repetition's sample per system. */
export interface Row {
  /** Stable key the targets and the chart look rows up by. */
  id: string;
  label: string;
  unit: string;
  better: 'higher' | 'lower' | 'none';
  samples: Partial<Record<SystemName, number[]>>;
  /** Decimal places in the table; defaults from the magnitude. */
  digits?: number;
}

/** A ratio column: median of `numerator` / median of `denominator`, per row. */
export interface Ratio {
  label: string;
  numerator: SystemName;
  denominator: SystemName;
}

/** What one scenario produced. */
export interface ScenarioResult {
  id: string;
  number: string;
  title: string;
  /** One paragraph: what was measured and how. */
  method: string;
  columns: SystemName[];
  ratios: Ratio[];
  rows: Row[];
  notes: string[];
  status: 'ok' | 'skipped' | 'failed';
  message?: string;
  seconds: number;
  /** The 1-minute load average when the scenario started (absent for a section measured inside another). */
  loadAverage?: number;
}

/** Builds rows incrementally while a scenario runs. */
export class RowSet {
  readonly rows: Row[] = [];

  /** Adds one sample of `id` for `system`, creating the row on first use. */
  add(id: string, meta: Omit<Row, 'id' | 'samples'>, system: SystemName, value: number): void {
    let row = this.rows.find((r) => r.id === id);
    if (!row) {
      row = { id, ...meta, samples: {} };
      this.rows.push(row);
    }
    (row.samples[system] ??= []).push(value);
  }
}
