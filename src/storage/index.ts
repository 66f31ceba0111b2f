// Binds the Sequelize models to the process's connection, once.
import type { Sequelize } from 'sequelize';
import { sequelize } from '../core/postgres';
import { initCouponModel } from './coupon';
import { initPolicyModel } from './policy';
import { initReservationModel } from './reservation';

let bound: Sequelize | undefined;

export function initModels(db: Sequelize = sequelize()): Sequelize {
  if (bound !== db) {
    initPolicyModel(db);
    initCouponModel(db);
    initReservationModel(db);
    bound = db;
  }
  return db;
}
